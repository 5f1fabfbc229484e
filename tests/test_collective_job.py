"""A whole collective job without a network: three roster parties' state machines
(parties.collective) behind their task answerers, the coordinator's relay
(coordinator.collective) and the real encrypted gradient kernel. Key generation, statistics
decrypted toward the parties only, the label term to shares, every iteration's masked step and
the model delivered to the parties: it equals the float64 replica, and the coordinator's side
never holds a key share or the model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import tenseal as ts

from coordinator.collective import (
    CollectiveInputs,
    Relay,
    commit_label_terms,
    commit_statistics,
    decrypt_statistics,
    generate_keys,
    train,
)
from coordinator.gradient import GradientKernel
from hefl import sealio, signed
from hefl.algorithm import add_bias, choose_hyperparameters, standardize, train_replica
from hefl.errors import ProtocolError
from hefl.models import Model, get_model
from hefl.models.base import KernelForm
from hefl.models.replica import train_model_replica
from hefl.params import get_parameter_set
from hefl.protocols.collective.step import label_term_bytes, stats_protocol
from hefl.v1 import hefl_pb2 as pb
from parties.collective import CollectiveMember, Roster
from parties.identity import SigningKey
from parties.sealing import SealingKey
from parties.session import TaskAnswerer
from tests.helpers import COLLECTIVE_BOUND

PARTIES = ("a-hospital", "b-hospital", "c-hospital")
PARAMS = get_parameter_set("n8192-depth4")
JOB = "job-collective"


class AnswererLink:
    """A task link straight to a party's answerer: the task and the answer cross as bytes,
    through the same cache and state machine as over gRPC."""

    def __init__(self, answerer: TaskAnswerer) -> None:
        self.answerer = answerer
        self.bytes_sent = 0
        self.bytes_received = 0
        self.tasks: list[bytes] = []

    def call(self, task: pb.KeyHolderTask, *, timeout_s: float) -> pb.KeyHolderResult:
        payload = task.SerializeToString()
        self.tasks.append(payload)
        answer = self.answerer.answer(payload)
        self.bytes_sent += len(payload)
        self.bytes_received += len(answer)
        result = pb.KeyHolderResult.FromString(answer)
        if result.WhichOneof("result") == "error":
            raise ProtocolError(result.error)
        return result


class MemoryPool:
    """The real gradient kernel on one block held in memory (no Ray)."""

    size = 1

    def load(self) -> None:
        pass

    def peak_rss_mb(self) -> list[float]:
        return []

    def shutdown(self) -> None:
        pass

    def __init__(self, context: ts.Context, columns: Sequence[bytes]) -> None:
        self._context = context
        self._columns = [sealio.deserialize(context, c, what="column") for c in columns]
        self._kernel = GradientKernel(context)

    def gradient(
        self, masked_weights: Sequence[bytes], unmask: Sequence[float], *, form: KernelForm
    ) -> list[list[bytes]]:
        weights = [sealio.deserialize(self._context, w, what="weights") for w in masked_weights]
        assert not any(unmask)
        sums = self._kernel.gradient_sums(
            [GradientKernel.open(w) for w in weights],
            [[GradientKernel.open(c) for c in self._columns]],
            form,
        )
        slots = PARAMS.slots
        return [[sealio.vector_bytes(g, size=slots, scale=g.scale) for g in sums]]


def _data(rows: int = 240, features: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, features)) * [1, 2, 0.5, 3, 1] + [0, 1, -1, 2, 0]
    y = (x @ [1.0, -0.5, 2.0, 0.3, 0.0] + rng.normal(size=rows) > 1.0).astype(float)
    return x, y


@pytest.fixture(scope="module")
def run() -> dict:
    x, y = _data()
    return _run_job(x, y, get_model("logistic"), pb.TrainingOptions())


def _run_job(x: np.ndarray, y: np.ndarray, model: Model, options: pb.TrainingOptions) -> dict:
    """A whole collective job of ``model``: three state machines, keys to model, in process."""
    job = prepare_job(x, y, model, options)
    job["report"] = train(job["inputs"], pool=job["pool"], relay=job["relay"])
    return job


def roster_parties(x: np.ndarray, y: np.ndarray, model: Model, options: pb.TrainingOptions) -> dict:
    """Three roster parties of a collective job of ``model``, each holding its share of the
    rows: their state machines, each behind its answerer's link, and their keys."""
    parts = np.array_split(np.arange(len(y)), len(PARTIES))
    features = [f"f{j}" for j in range(x.shape[1])]
    signing = {p: SigningKey.generate() for p in PARTIES}
    sealing = {p: SealingKey() for p in PARTIES}
    roster = Roster({p: signing[p].public_bytes for p in PARTIES})
    members = {
        p: CollectiveMember(
            job_id=JOB,
            name=p,
            params=PARAMS,
            roster=roster,
            features=features,
            options=options,
            signing_key=signing[p],
            sealing_key=sealing[p],
        )
        for p in PARTIES
    }
    protocol = stats_protocol(len(features), PARAMS)
    for p, rows in zip(PARTIES, parts, strict=True):
        members[p].make_stats = lambda context, rows=rows: protocol.gen_share(context, x[rows])
        members[p].make_label_term = lambda context, summary, rows=rows: label_term_bytes(
            context,
            model.label_term(add_bias(standardize(x[rows], summary.mean, summary.std)), y[rows]),
        )
    links = {p: AnswererLink(TaskAnswerer(m)) for p, m in members.items()}
    return {
        "members": members,
        "links": links,
        "signing": signing,
        "sealing": sealing,
        "parts": parts,
        "features": features,
    }


def prepare_job(
    x: np.ndarray,
    y: np.ndarray,
    model: Model,
    options: pb.TrainingOptions,
    *,
    parties: dict | None = None,
    setup_relay: Relay | None = None,
) -> dict:
    """A collective job of ``model`` up to its training: three state machines behind their
    answerers (``parties``, or new ones from :func:`roster_parties`), keys made, statistics
    decrypted, label terms committed over ``setup_relay`` (a plain relay by default); ``inputs``
    and ``pool`` are what :func:`coordinator.collective.train` takes, with ``relay``."""
    parties = parties or roster_parties(x, y, model, options)
    members, links = parties["members"], parties["links"]
    signing, sealing = parties["signing"], parties["sealing"]
    parts, features = parties["parts"], parties["features"]
    relay = Relay(links)
    setup = setup_relay or relay
    keys = generate_keys(setup, job_id=JOB, params=PARAMS)
    commit_statistics(setup, keys)
    context = ts.context_from(keys.context_bytes)
    hellos = [
        pb.PartyHello(
            name=p,
            features=features,
            seal_public_key=sealing[p].public_bytes,
            signing_public_key=signing[p].public_bytes,
            seal_key_signature=signing[p].sign(
                signed.SEAL_KEY, signed.seal_key_parts(JOB, p, sealing[p].public_bytes)
            ),
        )
        for p in PARTIES
    ]
    stats = []
    for p in PARTIES:
        share = members[p].stats_share
        assert share is not None and members[p].stats_released.is_set()
        stats.append(share.to_proto(job_id=JOB, party=p))
    count, curvature = decrypt_statistics(setup, stats=stats, hellos=hellos)
    summary = members[PARTIES[0]].summary
    assert summary is not None
    xs = add_bias(standardize(x, summary.mean, summary.std))
    # One block: each party encrypts its rows in its place, zeros elsewhere; the sum is the block.
    columns = []
    for j in range(xs.shape[1]):
        total = None
        for rows in parts:
            values = np.zeros(PARAMS.slots)  # a whole block: zero padding adds nothing
            values[rows] = xs[rows, j]
            vector = ts.ckks_vector(context, values.tolist())
            total = vector if total is None else total + vector
        columns.append(sealio.serialize(total))
    commit_label_terms(setup)
    label_terms = {p: members[p].label_term or b"" for p in PARTIES}
    signatures = {
        p: signing[p].sign(signed.LABEL_TERM, signed.label_term_parts(JOB, p, term))
        for p, term in label_terms.items()
    }
    hyper = choose_hyperparameters(
        curvature=curvature,
        iterations=options.iterations,
        l2=options.l2,
        model=model.name,
        classes=model.classes,
        rows=count,
    )
    inputs = CollectiveInputs(
        job=keys.job,
        context=context,
        params=PARAMS,
        hyper=hyper,
        rows=count,
        columns=hyper.outputs * xs.shape[1],
        label_terms=label_terms,
        label_term_signatures=signatures,
        hellos=tuple(hellos),
    )
    return {
        "inputs": inputs,
        "pool": MemoryPool(context, columns),
        "members": members,
        "links": links,
        "relay": relay,
        "xs": xs,
        "y": y,
        "hyper": hyper,
        "count": count,
        "summary": summary,
        "x": x,
        "stats": stats,
        "hellos": hellos,
        "keys": keys,
    }


def test_every_party_gets_the_replica_model(run: dict) -> None:
    """Within :data:`tests.helpers.COLLECTIVE_BOUND`."""
    replica = train_replica(run["xs"], run["y"], run["hyper"])
    for member in run["members"].values():
        weights = np.asarray(member.model["weights"])
        assert np.max(np.abs(weights - replica.weights)) < COLLECTIVE_BOUND
    assert run["count"] == len(run["y"])
    assert np.allclose(run["summary"].mean, run["x"].mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "multiclass"])
def test_other_models_train_collectively_to_their_replica(name: str) -> None:
    """The model family in collective mode: the parties derive the model's hyperparameters and
    its k x columns outputs as a key holder would, and every party gets the replica's model."""
    x, y = _data()
    if name == "linear":
        y = x @ [0.5, -0.2, 1.0, 0.1, 0.0] + 0.1 * np.random.default_rng(3).normal(size=len(y))
        model = get_model("linear")
    else:
        y = np.digitize(x @ [1.0, -0.5, 2.0, 0.3, 0.0], [0.0, 2.0]).astype(float)
        model = get_model("multiclass", classes=3)
    options = pb.TrainingOptions(iterations=6, model=name, classes=model.classes)
    job = _run_job(x, y, model, options)
    hyper = job["hyper"]
    replica = train_model_replica(
        hyper.family,
        job["xs"],
        y,
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=hyper.l2,
    )
    tolerance = COLLECTIVE_BOUND * max(1.0, float(np.abs(replica.weights).max()))
    for member in job["members"].values():
        weights = np.asarray(member.model["weights"])
        assert weights.shape == (model.outputs * 6,)
        np.testing.assert_allclose(weights, replica.weights, atol=tolerance)


def test_no_party_takes_a_step_twice_or_out_of_order(run: dict) -> None:
    member = run["members"][PARTIES[0]]
    answerer = run["links"][PARTIES[0]].answerer
    for step in ("seed-commit", "keys", "context", "stats-commit", "stats", "setup", "model"):
        with pytest.raises(ProtocolError, match="refused"):
            member.handle(pb.KeyHolderTask(collective=pb.CollectiveTask(step=step)))
    with pytest.raises(ProtocolError, match="iterations are done"):
        member.handle(pb.KeyHolderTask(collective=pb.CollectiveTask(step="refresh", iteration=15)))
    with pytest.raises(ProtocolError, match="no key holder"):
        member.handle(pb.KeyHolderTask(setup=pb.TrainingSetup()))
    assert answerer.handled["refresh"] == run["hyper"].iterations


def test_traffic_per_party_per_iteration_is_stated(run: dict) -> None:
    report = run["report"]
    per_party = report.refresh_bytes_per_iteration / len(PARTIES)
    assert 1e6 < per_party < 2e7  # about one top-level polynomial per column, and the gradients


def test_a_failed_preparation_costs_no_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A party makes the key part of its next share in the background; when that fails, the
    refresh makes the part itself (a party answers each iteration once, so a failure there
    must not cost the iteration), and the job ends with the replica's model."""
    import parties.collective

    real = parties.collective.prepare_reencryption
    failed: list[int] = []

    def flaky(job, secret, *, iteration, **kwargs):  # type: ignore[no-untyped-def]
        if iteration == 2 and not failed:
            failed.append(iteration)
            raise MemoryError("no room for the prepared part")
        return real(job, secret, iteration=iteration, **kwargs)

    monkeypatch.setattr(parties.collective, "prepare_reencryption", flaky)
    x, y = _data()
    model = get_model("logistic")
    job = _run_job(x, y, model, pb.TrainingOptions(iterations=4))

    assert failed == [2]
    replica = train_replica(job["xs"], job["y"], job["hyper"])
    for member in job["members"].values():
        assert (
            np.max(np.abs(np.asarray(member.model["weights"]) - replica.weights)) < COLLECTIVE_BOUND
        )
