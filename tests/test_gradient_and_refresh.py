"""The encrypted maths against plaintext, within stated tolerances."""

import numpy as np
import pytest
import tenseal as ts

from coordinator.gradient import GradientKernel
from coordinator.refresh import RefreshMasker
from hefl import sealio
from hefl.algorithm import SigmoidPolynomial, l2_vector, label_term, nesterov_step
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.v1 import hefl_pb2 as pb
from parties.keyholder import MaskedOptimizer, WeightEncryptor


def _blocks(context, data, slots):
    blocks = []
    for start in range(0, len(data), slots):
        part = data[start : start + slots]
        padded = np.zeros((slots, data.shape[1]))
        padded[: len(part)] = part
        blocks.append(
            [
                GradientKernel.open(ts.ckks_vector(context, padded[:, j]))
                for j in range(data.shape[1])
            ]
        )
    return blocks


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_encrypted_gradient_sums_equal_plaintext(name):
    params = PARAMETER_SETS[name]
    context = params.make_context()
    rng = np.random.default_rng(0)
    rows = params.slots + 300  # two blocks, the second one partly padding
    data = np.hstack([rng.normal(size=(rows, 5)) * 2.0, np.ones((rows, 1))])
    weights = rng.normal(size=6)
    sigmoid = SigmoidPolynomial.fit(16.0)
    k, a, b = sigmoid.encrypted_form()
    scaled = [
        GradientKernel.open(ts.ckks_vector(context, np.full(params.slots, k * w))) for w in weights
    ]
    kernel = GradientKernel(context)
    blocks = _blocks(context, data, params.slots)
    expected = (sigmoid(data @ weights) - 0.5) @ data

    # Twice: the kernel must leave the shards (and weights) as they were.
    for _ in range(2):
        sums = kernel.gradient_sums(scaled, blocks, a=a, b=b)
        vectors = [
            sealio.deserialize(
                context,
                sealio.vector_bytes(s, size=params.slots, scale=s.scale),
                what="gradient",
            )
            for s in sums
        ]
        got = np.array([np.sum(v.decrypt()) for v in vectors])
        # CKKS noise: about 1e-3 per slot at the 30-bit scale, summed over 2 blocks of slots.
        np.testing.assert_allclose(
            got, expected, atol=0.05 * np.sqrt(rows / 455) + 1e-3 * np.abs(expected).max()
        )


def test_masked_refresh_rounds_follow_plaintext_nesterov(private_context):
    """The key holder steps masked values, the coordinator steps the masks: the unmasked
    weights after several rounds equal plain Nesterov on the same gradient sums."""
    params = PARAMETER_SETS["n8192-depth4"]
    columns, rows, lr = 4, 1000, 0.8
    rng = np.random.default_rng(1)
    l2 = l2_vector(columns, 0.01)
    sigmoid = SigmoidPolynomial.fit(16.0)
    k = sigmoid.encrypted_form()[0]
    constant = rng.normal(size=columns) * 10
    masker = RefreshMasker(
        context=private_context,
        columns=columns,
        slots=params.slots,
        mask_bits=params.mask_bits,
        rows=rows,
        learning_rate=lr,
        l2=l2,
        weight_scale=k,
        rng=np.random.default_rng(2),
    )
    weights0, velocity0 = masker.initial_state()
    label_ct = ts.ckks_vector(private_context, constant)
    setup = pb.TrainingSetup(
        rows=rows,
        columns=columns,
        learning_rate=lr,
        l2=l2.tolist(),
        sigmoid_coefficients=list(sigmoid.coefficients),
        masked_label_term=sealio.serialize(masker.mask_label_term(label_ct)),
        weights=weights0.tolist(),
        velocity=velocity0.tolist(),
        slots=params.slots,
    )
    optimizer = MaskedOptimizer(private_context, setup, WeightEncryptor(private_context))
    w = np.zeros(columns)
    v = np.zeros(columns)
    for iteration in range(5):
        slot_values = rng.normal(size=(columns, params.slots))
        gradients = [ts.ckks_vector(private_context, row) for row in slot_values]
        masked = masker.mask_round(gradients, iteration)
        # What the key holder sees is far from the true sums.
        seen = np.array(
            [
                np.sum(sealio.deserialize(private_context, g, what="masked").decrypt())
                for g in masked.masked_gradients
            ]
        )
        assert np.min(np.abs(seen - slot_values.sum(axis=1))) > 1e3

        fresh = optimizer.refresh(
            pb.RefreshTask(
                iteration=iteration,
                masked_gradients=masked.masked_gradients,
                weights_offset=masked.weights_offset.tolist(),
                velocity_offset=masked.velocity_offset.tolist(),
            )
        )
        unmask = masker.weights_unmask()
        got = (
            np.array(
                [
                    np.mean(sealio.deserialize(private_context, c, what="w").decrypt()) - u
                    for c, u in zip(fresh, unmask, strict=False)
                ]
            )
            / k
        )
        w, v = nesterov_step(
            weights=w,
            velocity=v,
            gradient_sums=slot_values.sum(axis=1),
            label_term=constant,
            rows=rows,
            learning_rate=lr,
            l2=l2,
            iteration=iteration,
        )
        np.testing.assert_allclose(got, w, atol=1e-3)
    np.testing.assert_allclose(optimizer.unmask_model(masker.model_mask), v, atol=1e-4)


def test_fresh_weights_are_seeded_and_load_under_the_public_context(
    private_context, public_context
):
    """The key holder's secret-key ciphertexts: half the bytes of public-key ones, usable by
    workers that hold only the public context, and they decrypt to the value in every slot."""
    slots = PARAMETER_SETS[DEFAULT_PARAMETER_SET].slots
    (fresh,) = WeightEncryptor(private_context).encrypt([0.375])
    (public,) = sealio.encrypt_replicated(public_context, [0.375], slots)
    assert len(fresh) < 0.6 * len(public)
    vector = sealio.deserialize(public_context, fresh, what="weights")
    vector += vector  # computable without the secret key
    values = np.array(vector.decrypt(private_context.secret_key()))
    assert values.shape == (slots,)
    np.testing.assert_allclose(values, 0.75, atol=1e-4)


def test_label_term_matches_definition():
    x = np.array([[1.0, 2.0, 1.0], [3.0, -1.0, 1.0]])
    y = np.array([1.0, 0.0])
    np.testing.assert_allclose(label_term(x, y), -0.5 * x[0] + 0.5 * x[1])
