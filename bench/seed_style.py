"""The starting point hefl is benchmarked against, re-created faithfully.

This is TenSEAL's encrypted logistic-regression tutorial ("Tutorial 1: Training and Evaluation
of Logistic Regression on Encrypted Data") restated as a function, with one client holding all
the data and the key, so the benchmark can time and score it next to hefl:

* CKKS context: ``poly_modulus_degree`` N = 8192, ``coeff_mod_bit_sizes``
  ``[40, 21, 21, 21, 21, 21, 21, 40]`` (six rescalings), global scale ``2**21``, Galois keys
  (for the rotations inside ``dot``) and relinearization keys.
* One CKKS vector per training sample ``x_i`` (length d) and one length-1 CKKS vector per label
  ``y_i``; the model is an encrypted weight vector ``w`` (length d) and bias ``b`` (length 1).
* The sigmoid is replaced by ``sigma3(x) = 0.5 + 0.197 x - 0.004 x^3``, evaluated with
  ``CKKSVector.polyval``.
* Full-batch gradient descent: for each sample ``out = sigma3(x_i . w + b)``,
  ``diff = out - y_i``, ``delta_w += x_i * diff``, ``delta_b += diff``; then
  ``w <- w - lr * (delta_w / n + l2 * w)`` and ``b <- b - lr * delta_b / n`` (tutorial: lr = 1,
  l2 = 0.05). The learning rate is folded into the plaintext scalars so that lr != 1 costs no
  extra level: ``w * (1 - lr * l2) - delta_w * (lr / n)``.
* After each epoch the multiplicative depth is exhausted, so the key holder decrypts ``w`` and
  ``b`` and re-encrypts them (the "refresh").
* Features are standardized in plaintext by the client with the training mean and std.

Precision is part of the starting point and is kept as is. Two TenSEAL effects dominate:

* SEAL can only use primes p = 1 mod 2N, and the 21-bit ones are 15-32 % below 2**21
  (1785857, 1769473, 1720321, 1589249, ...), yet TenSEAL resets the scale to exactly 2**21 after
  every rescale (TenSEAL issue #253). Each multiplication therefore inflates the result by the
  ratio 2**21 / p: ``sigma3`` is off by up to ~0.06 on [-3, 3], and the update compounds it.
* Each rotation inside ``dot`` adds an absolute error of about 0.1-0.4 at scale 2**21, so
  ``x_i . w`` is off by up to about 1 for d = 30.

The trained weights thus differ from a plaintext replay of the same step by order 1, while the
step itself matches to ~1e-5 with 40-bit primes at N = 16384 (pass those to
:func:`make_context` to check). Keys are fresh on every call, so results vary between runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (40, 21, 21, 21, 21, 21, 21, 40)
GLOBAL_SCALE = 2**21
SIGMA3_COEFFICIENTS = (0.5, 0.197, 0.0, -0.004)
"""Coefficients of ``sigma3``, lowest degree first, as ``polyval`` takes them."""


@dataclass(frozen=True)
class SeedStyleResult:
    """Timings and quality of one seed-style training run.

    Attributes:
        epoch_s: Mean wall time of one encrypted training epoch (forward, backward, update and
            refresh), excluding the encryption of the data.
        encrypt_s: Time to encrypt the training samples and labels.
        accuracy: Test accuracy of the decrypted model after ``epochs`` epochs.
        auc: ROC AUC on the test rows, or ``None`` when the test labels hold one class.
        epochs: Number of epochs trained.
        rows: Number of training rows actually used.
        weights: Decrypted final weights followed by the bias.
    """

    epoch_s: float
    encrypt_s: float
    accuracy: float
    auc: float | None
    epochs: int
    rows: int
    weights: list[float]


def make_context(
    *,
    poly_modulus_degree: int = POLY_MODULUS_DEGREE,
    coeff_mod_bit_sizes: Sequence[int] = COEFF_MOD_BIT_SIZES,
    global_scale: float = GLOBAL_SCALE,
) -> ts.Context:
    """Build a private CKKS context with Galois and relinearization keys.

    The defaults are the tutorial's parameters; other values exist only to check the maths
    at higher precision.

    Args:
        poly_modulus_degree: Ring dimension N.
        coeff_mod_bit_sizes: Bit sizes of the modulus chain, special prime last.
        global_scale: Encoding scale.

    Returns:
        A TenSEAL context holding the secret key.
    """
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=poly_modulus_degree,
        coeff_mod_bit_sizes=list(coeff_mod_bit_sizes),
    )
    context.global_scale = global_scale
    context.generate_galois_keys()
    context.generate_relin_keys()  # already made by ts.context; explicit as in the tutorial
    return context


def sigma3(enc_x: ts.CKKSVector) -> ts.CKKSVector:
    """Evaluate the tutorial's degree-3 sigmoid approximation on a ciphertext.

    Args:
        enc_x: Encrypted inputs, ideally within [-5, 5] where the approximation holds.

    Returns:
        Encrypted ``0.5 + 0.197 x - 0.004 x^3``, slot-wise.
    """
    return enc_x.polyval(list(SIGMA3_COEFFICIENTS))


def standardize(
    train_x: NDArray[np.float64], *others: NDArray[np.float64]
) -> list[NDArray[np.float64]]:
    """Standardize arrays with the mean and std of ``train_x`` (a zero std becomes 1).

    Args:
        train_x: Training features, n x d.
        *others: Further arrays (e.g. test features) scaled with the training statistics.

    Returns:
        ``[train_x, *others]`` standardized.
    """
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return [(a - mean) / std for a in (train_x, *others)]


def _epoch(
    enc_xs: Sequence[ts.CKKSVector],
    enc_ys: Sequence[ts.CKKSVector],
    w: ts.CKKSVector,
    b: ts.CKKSVector,
    *,
    learning_rate: float,
    l2: float,
) -> tuple[ts.CKKSVector, ts.CKKSVector]:
    """One encrypted full-batch gradient-descent epoch, without the refresh.

    Returns:
        The updated (encrypted, level-exhausted) weights and bias.
    """
    n = len(enc_xs)
    delta_w: ts.CKKSVector | None = None
    delta_b: ts.CKKSVector | None = None
    for enc_x, enc_y in zip(enc_xs, enc_ys, strict=True):
        out = sigma3(enc_x.dot(w) + b)
        diff = out - enc_y
        grad_w = enc_x * diff
        if delta_w is None or delta_b is None:
            delta_w, delta_b = grad_w, diff
        else:
            delta_w += grad_w
            delta_b += diff
    assert delta_w is not None and delta_b is not None
    w = w * (1.0 - learning_rate * l2) - delta_w * (learning_rate / n)
    b = b - delta_b * (learning_rate / n)
    return w, b


def run_seed_style(
    train_x: NDArray[np.float64],
    train_y: NDArray[np.float64],
    test_x: NDArray[np.float64],
    test_y: NDArray[np.float64],
    *,
    epochs: int = 1,
    max_rows: int | None = None,
    learning_rate: float = 1.0,
    l2: float = 0.05,
    seed: int = 0,
) -> SeedStyleResult:
    """Train the tutorial-style encrypted logistic regression and score it in plaintext.

    Args:
        train_x: Raw training features, n x d.
        train_y: Training labels (0/1), length n.
        test_x: Raw test features, m x d.
        test_y: Test labels (0/1), length m.
        epochs: Encrypted epochs to run, each followed by a decrypt/re-encrypt refresh.
        max_rows: If given, train on only the first ``max_rows`` training rows (smoke runs);
            the standardization statistics still come from all of ``train_x``.
        learning_rate: Gradient-descent step (the tutorial uses 1).
        l2: L2 regularization coefficient on the weights (the tutorial uses 0.05).
        seed: Seed of the small uniform(-0.01, 0.01) initial weights and bias.

    Returns:
        The timings, test accuracy and AUC, and the decrypted model.

    Raises:
        ValueError: If ``epochs`` < 1, or there are no training rows.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    train_y = np.asarray(train_y, dtype=np.float64).ravel()
    test_y = np.asarray(test_y, dtype=np.float64).ravel()
    train_z, test_z = standardize(train_x, test_x)
    if max_rows is not None:
        train_z, train_y = train_z[:max_rows], train_y[:max_rows]
    rows, d = train_z.shape
    if rows == 0:
        raise ValueError("no training rows")

    context = make_context()
    start = time.perf_counter()
    enc_xs = [ts.ckks_vector(context, row.tolist()) for row in train_z]
    enc_ys = [ts.ckks_vector(context, [float(label)]) for label in train_y]
    encrypt_s = time.perf_counter() - start

    rng = np.random.default_rng(seed)
    init = rng.uniform(-0.01, 0.01, size=d + 1)
    w = ts.ckks_vector(context, init[:d].tolist())
    b = ts.ckks_vector(context, init[d:].tolist())

    epoch_times = []
    for _ in range(epochs):
        start = time.perf_counter()
        w, b = _epoch(enc_xs, enc_ys, w, b, learning_rate=learning_rate, l2=l2)
        # Refresh: the key holder decrypts and re-encrypts at full depth.
        w_plain, b_plain = w.decrypt(), b.decrypt()
        w = ts.ckks_vector(context, w_plain)
        b = ts.ckks_vector(context, b_plain)
        epoch_times.append(time.perf_counter() - start)

    weights = np.asarray(w_plain, dtype=np.float64)
    bias = float(b_plain[0])
    scores = test_z @ weights + bias
    accuracy = float(np.mean((scores > 0).astype(np.float64) == test_y))
    auc = float(roc_auc_score(test_y, scores)) if len(np.unique(test_y)) > 1 else None
    return SeedStyleResult(
        epoch_s=float(np.mean(epoch_times)),
        encrypt_s=encrypt_s,
        accuracy=accuracy,
        auc=auc,
        epochs=epochs,
        rows=rows,
        weights=[*weights.tolist(), bias],
    )
