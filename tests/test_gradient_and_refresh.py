"""The encrypted maths against plaintext, within stated tolerances: the gradient kernel, and the
whole training loop (the coordinator's code, the real workers' class, the real key holder)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from coordinator.gradient import GradientKernel
from coordinator.store import JobStore
from coordinator.training import MemoryJournal, TrainingInputs, train
from coordinator.worker import BlockSource, ShardWorker
from hefl import sealio, signed
from hefl.algorithm import (
    SigmoidPolynomial,
    add_bias,
    choose_hyperparameters,
    label_term,
    standardize,
    train_replica,
)
from hefl.codec import PackingLayout
from hefl.errors import InvalidArgument
from hefl.models import get_model
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.refresh import Recipient
from hefl.protocols.stats import StatsProtocol, StatsRequest, summary_from_proto
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules
from parties.identity import SigningKey
from parties.keyholder import KeyHolder, SecretKey, associated_data
from parties.sealing import SealedBox, SealingKey
from tests.helpers import KEY_HOLDER_BOUND, at_last_level


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


def decrypted_sums(context: ts.Context, sums, form) -> np.ndarray:
    """The slot sums of the kernel's gradients, each loaded through the check every receiver
    applies (every slot, the last level, the form's exact scale)."""
    rules = CiphertextRules(context)
    return np.array(
        [
            np.sum(
                rules.load(
                    sealio.vector_bytes(s, size=rules.slots, scale=s.scale),
                    rules.gradient(form),
                    what="gradient",
                ).decrypt()
            )
            for s in sums
        ]
    )


def kernel_tolerance(expected: np.ndarray) -> float:
    """How far the kernel's sums may be from plaintext: CKKS noise, measured at 0.7e-3 to
    1.1e-3 on two default-set blocks of every shape (2e-6 on n16384). TenSEAL's scale
    convention (every rescaled ciphertext labelled 2^30, the primes up to 3e-4 below it) put
    them 3e-4 to 7e-4 off relatively on the default set: 0.6 to 3.3 on the same sums."""
    return 5e-3 + 1e-6 * float(np.abs(expected).max())


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_encrypted_gradient_sums_equal_plaintext(name):
    """Two blocks, the second partly padding, on each parameter set; every shape on the
    default set: ``tests/test_models.py``."""
    params = PARAMETER_SETS[name]
    context = params.make_context()
    rng = np.random.default_rng(0)
    rows = params.slots + 300
    data = np.hstack([rng.normal(size=(rows, 5)) * 2.0, np.ones((rows, 1))])
    weights = rng.normal(size=6)
    form = get_model().kernel()
    scaled = [
        GradientKernel.open(ts.ckks_vector(context, np.full(params.slots, form.weight_scale * w)))
        for w in weights
    ]
    kernel = GradientKernel(context)
    blocks = _blocks(context, data, params.slots)
    sigmoid = SigmoidPolynomial.fit(16.0)
    expected = (sigmoid(data @ weights) - 0.5) @ data

    # Twice: the kernel must leave the shards (and weights) as they were.
    for _ in range(2):
        got = decrypted_sums(context, kernel.gradient_sums(scaled, blocks, form), form)
        np.testing.assert_allclose(got, expected, rtol=0, atol=kernel_tolerance(expected))
    margins = kernel.margins(scaled, blocks[0], form.outputs)
    assert [m.scale for m in margins] == [CiphertextRules(context).margin(form).scale]


def test_a_gradient_at_another_scale_is_refused(private_context):
    """A last-level ciphertext labelled with the global scale, as TenSEAL labels one, is not a
    gradient of the kernel: refused by name, before it is used."""
    rules = CiphertextRules(private_context)
    data = at_last_level(private_context, [1.0] * rules.slots)
    wanted = rules.gradient(get_model("logistic").kernel())

    with pytest.raises(
        InvalidArgument, match=rf"^gradient has scale \[1073741824.0\], expected {wanted.scale}$"
    ):
        rules.load(data, wanted, what="gradient")


class InProcessPool:
    """One :class:`ShardWorker`, called directly instead of through Ray."""

    def __init__(self, worker: ShardWorker) -> None:
        self._worker = worker
        self.size = 1

    def load(self) -> None:
        pass  # the worker read its blocks when it was made

    def gradient(self, masked_weights, unmask, *, form):
        return [self._worker.gradient(masked_weights, unmask, form)]

    def peak_rss_mb(self):
        return [0.0]

    def shutdown(self) -> None:
        pass


class InProcessLink:
    """The key holder answering the coordinator's tasks in this process, every task and result
    serialized as on the wire (the stream's framing is tested over gRPC elsewhere)."""

    def __init__(self, keyholder: KeyHolder) -> None:
        self._keyholder = keyholder
        self.bytes_sent = 0
        self.bytes_received = 0
        self.tasks: list[str] = []

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
        payload = task.SerializeToString()
        answer = self._keyholder.handle(pb.KeyHolderTask.FromString(payload)).SerializeToString()
        self.bytes_sent += len(payload)
        self.bytes_received += len(answer)
        self.tasks.append(task.WhichOneof("task"))
        return pb.KeyHolderResult.FromString(answer)


def test_training_loop_delivers_the_float64_replica(
    tmp_path: Path, private_context, public_context
):
    """Two parties' rows in one block; the real key holder summarizes their statistics, then the
    coordinator's loop, a real worker and the key holder train, reveal every iterate and seal
    the model: each iterate is hefl's algorithm replayed in float64."""
    params = PARAMETER_SETS[DEFAULT_PARAMETER_SET]
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(280, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, -1.0, 2.0]
    labels = (raw @ [1.0, -0.4, 2.0, 0.3] + rng.normal(size=280) > -1.0).astype(float)
    features = ["f0", "f1", "f2", "f3"]
    keyholder = KeyHolder(
        context=private_context,
        job_id="job-1",
        features=features,
        options=pb.TrainingOptions(iterations=6, reveal_intermediate=True),
        signing_key=SigningKey.generate(),
    )
    link = InProcessLink(keyholder)
    protocol = StatsProtocol(features=4, slots=params.slots)
    request = StatsRequest(
        job_id="job-1",
        features=4,
        shares=(
            ("a", protocol.gen_share(public_context, raw[:150])),
            ("b", protocol.gen_share(public_context, raw[150:])),
        ),
    )
    answer = link.call(pb.KeyHolderTask(decrypt_stats=request.to_proto()), timeout_s=60)
    stats = summary_from_proto(answer.values, features=4)
    np.testing.assert_allclose(stats.mean, raw.mean(axis=0), atol=1e-4)
    columns = add_bias(standardize(raw, stats.mean, stats.std))
    hyper = choose_hyperparameters(curvature=stats.curvature, iterations=6)
    layout = PackingLayout.assign(slots=params.slots, party_rows=[("a", 150), ("b", 130)])
    store = JobStore(tmp_path)
    store.context_path().write_bytes(public_context.serialize())
    label_terms = []
    for party in layout.parties:
        rows = slice(party.offset, party.offset + party.rows)
        for block, column, vector in layout.pack(party.name, columns[rows]):
            path = store.column_path(party.name, block, column)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sealio.serialize(ts.ckks_vector(public_context, vector)))
        label_terms.append(
            sealio.serialize(
                ts.ckks_vector(public_context, label_term(columns[rows], labels[rows]))
            )
        )
    worker = ShardWorker.from_job_directory(
        parameter_set=params.name,
        job_root=str(tmp_path),
        blocks=[BlockSource(0, ("a", "b"))],
        columns=5,
    )
    recipient, recipient_signing = SealingKey(), SigningKey.generate()
    signature = recipient_signing.sign(
        signed.SEAL_KEY, signed.seal_key_parts("job-1", "a", recipient.public_bytes)
    )

    models, report = train(
        TrainingInputs(
            context=public_context,
            params=params,
            hyper=hyper,
            rows=280,
            columns=5,
            label_term=sealio.add_vectors(public_context, label_terms, what="label term"),
            recipients=(
                Recipient("a", recipient.public_bytes, recipient_signing.public_bytes, signature),
            ),
            reveal_intermediate=True,
        ),
        pool=InProcessPool(worker),
        link=link,
        journal=MemoryJournal(),
    )

    assert link.tasks == ["decrypt_stats", "setup", *["refresh", "reveal"] * 6, "finalize"]
    assert report.iterations == 6
    (sealed,) = models
    box = SealedBox(sealed.ephemeral_public_key, sealed.nonce, sealed.ciphertext)
    delivered = json.loads(recipient.open(box, associated=associated_data("job-1", "a")))
    # The revealed iterates reach the parties, sealed with the model, and never the coordinator.
    assert len(delivered["intermediate"]) == 6
    for t, model in enumerate(delivered["intermediate"], start=1):
        replica = train_replica(columns, labels, replace(hyper, iterations=t))
        # CKKS noise in the gradients and the refresh grows with the iterations (6e-4 at 6).
        np.testing.assert_allclose(model, replica.weights, atol=KEY_HOLDER_BOUND)
    np.testing.assert_allclose(
        delivered["weights"], train_replica(columns, labels, hyper).weights, atol=KEY_HOLDER_BOUND
    )
    assert keyholder.model is not None
    np.testing.assert_allclose(delivered["weights"], keyholder.model)
    assert delivered["features"] == features
    np.testing.assert_allclose(delivered["mean"], stats.mean)


def test_fresh_weights_are_seeded_and_load_under_the_public_context(
    private_context, public_context
):
    """The key holder's secret-key ciphertexts: half the bytes of public-key ones, usable by
    workers that hold only the public context, and they decrypt to the value in every slot."""
    slots = PARAMETER_SETS[DEFAULT_PARAMETER_SET].slots
    (fresh,) = SecretKey(private_context).encrypt_replicated([0.375])
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
