"""The key holder against a malicious coordinator: it follows the protocol it agreed to and
nothing else, refuses every deviation with a clear error, and keeps serving the honest protocol.

The coordinator's side is played here by the protocols' own coordinator halves, then bent the
ways an attacker would bend them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from hefl import sealio, signed
from hefl.algorithm import choose_hyperparameters
from hefl.codec import AggregateStats
from hefl.errors import InvalidArgument, PermissionDenied, ProtocolError
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.refresh import Recipient, RefreshCoordinator
from hefl.protocols.stats import StatsProtocol, StatsRequest, StatsShare, summary_from_proto
from hefl.v1 import hefl_pb2 as pb
from parties.identity import PartyIdentity, SigningKey
from parties.keyholder import KeyHolder
from parties.sealing import SealingKey
from tests.helpers import at_last_level, kernel_gradients
from tools.provision import provision

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]
FEATURES = ["a", "b", "c"]
JOB = "job-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    root: Path = tmp_path_factory.mktemp("project")
    provision(root, parties=["kh", "h2"])
    return {name: PartyIdentity.load(root / name).signing_key for name in ("kh", "h2")}


def _rows(party: str) -> np.ndarray:
    rng = np.random.default_rng(0 if party == "kh" else 1)
    return rng.normal(size=(40 if party == "kh" else 30, 3)) * [1.0, 5.0, 0.3]


def _share(public_context: ts.Context, keys: dict[str, SigningKey], party: str) -> StatsShare:
    share = StatsProtocol(features=3, slots=PARAMS.slots).gen_share(public_context, _rows(party))
    parts = signed.stats_parts(JOB, party, share.rows, share.pieces)
    return replace(share, signature=keys[party].sign(signed.STATS, parts))


def _keyholder(private_context, keys, *, reveal: bool = False) -> KeyHolder:
    return KeyHolder(
        context=private_context,
        job_id=JOB,
        features=FEATURES,
        options=pb.TrainingOptions(iterations=2, reveal_intermediate=reveal),
        signing_key=keys["kh"],
        roster={name: key.public_bytes for name, key in keys.items()},
    )


def _stats_task(shares: tuple[tuple[str, StatsShare], ...]) -> pb.KeyHolderTask:
    request = StatsRequest(job_id=JOB, features=3, shares=shares)
    return pb.KeyHolderTask(decrypt_stats=request.to_proto())


def _honest_stats(keyholder, public_context, keys) -> AggregateStats:
    shares = tuple((p, _share(public_context, keys, p)) for p in ("kh", "h2"))
    answer = keyholder.handle(_stats_task(shares))
    return summary_from_proto(answer.values, features=3)


def _coordinator(public_context, summary: AggregateStats) -> RefreshCoordinator:
    hyper = choose_hyperparameters(curvature=summary.curvature, iterations=2)
    return RefreshCoordinator(
        context=public_context, params=PARAMS, hyper=hyper, rows=summary.count, columns=4
    )


def _label(public_context) -> ts.CKKSVector:
    return ts.ckks_vector(public_context, [1.0, -2.0, 0.5, 3.0])


def _gradients(public_context) -> list[ts.CKKSVector]:
    return kernel_gradients(public_context, 4)


def _recipient(name: str, keys: dict[str, SigningKey], seal_key: bytes | None = None) -> Recipient:
    seal_key = seal_key or SealingKey().public_bytes
    parts = signed.seal_key_parts(JOB, name, seal_key)
    return Recipient(
        name, seal_key, keys[name].public_bytes, keys[name].sign(signed.SEAL_KEY, parts)
    )


# ----- statistics -------------------------------------------------------------------------


def test_an_uploaded_column_passed_off_as_statistics_is_refused(
    private_context, public_context, keys
):
    """The attack of the issue: a party's data ciphertext in place of statistics, to have the
    key holder decrypt its slots. The share is not what the party signed."""
    keyholder = _keyholder(private_context, keys)
    column = sealio.serialize(ts.ckks_vector(public_context, _rows("h2")[:, 0]))
    genuine = _share(public_context, keys, "h2")
    forged = replace(genuine, pieces=(column,))

    with pytest.raises(PermissionDenied, match="stats signature does not verify"):
        keyholder.handle(_stats_task((("kh", _share(public_context, keys, "kh")), ("h2", forged))))
    # One party's share passed off as another's (to decrypt it alone) fails the same way.
    with pytest.raises(PermissionDenied, match="stats signature does not verify"):
        keyholder.handle(_stats_task((("kh", genuine), ("h2", genuine))))
    # Nothing was decrypted: the honest statistics are still answered, once.
    summary = _honest_stats(keyholder, public_context, keys)
    expected = AggregateStats.of_rows(np.vstack([_rows("kh"), _rows("h2")]))
    np.testing.assert_allclose(summary.mean, expected.mean, atol=1e-5)


@pytest.mark.parametrize("parties", [("kh",), ("kh", "h2", "h2"), ("kh", "h2", "mallory")])
def test_statistics_of_other_than_the_roster_are_refused(
    private_context, public_context, keys, parties
):
    keyholder = _keyholder(private_context, keys)
    share = _share(public_context, keys, "kh")
    with pytest.raises(ProtocolError, match=r"refused: the job's parties are \['h2', 'kh'\]"):
        keyholder.handle(_stats_task(tuple((p, share) for p in parties)))


def test_statistics_are_decrypted_once(private_context, public_context, keys):
    keyholder = _keyholder(private_context, keys)
    _honest_stats(keyholder, public_context, keys)
    with pytest.raises(ProtocolError, match="task 'decrypt_stats' refused: .* 'setup' stage"):
        _honest_stats(keyholder, public_context, keys)


# ----- setup, refresh, reveal ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("iterations", 500), ("learning_rate", 5.0), ("rows", 7)]
)
def test_a_setup_other_than_the_agreed_training_is_refused(
    private_context, public_context, keys, field, value
):
    keyholder = _keyholder(private_context, keys)
    coordinator = _coordinator(public_context, _honest_stats(keyholder, public_context, keys))
    honest = coordinator.setup(_label(public_context))

    with pytest.raises(ProtocolError, match="training setup refused"):
        keyholder.handle(pb.KeyHolderTask(setup=replace(honest, **{field: value}).to_proto()))
    # The key holder keeps serving the legitimate protocol.
    keyholder.handle(pb.KeyHolderTask(setup=honest.to_proto()))


def test_extra_refreshes_and_unagreed_reveals_are_refused(private_context, public_context, keys):
    keyholder = _keyholder(private_context, keys)
    coordinator = _coordinator(public_context, _honest_stats(keyholder, public_context, keys))
    keyholder.handle(pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))
    gradients = _gradients(public_context)

    keyholder.handle(
        pb.KeyHolderTask(refresh=coordinator.request(gradients, iteration=0).to_proto())
    )
    with pytest.raises(ProtocolError, match="did not opt in to intermediate models"):
        keyholder.handle(pb.KeyHolderTask(reveal=coordinator.reveal(iteration=0).to_proto()))
    keyholder.handle(
        pb.KeyHolderTask(refresh=coordinator.request(gradients, iteration=1).to_proto())
    )
    with pytest.raises(ProtocolError, match="the job has 2 iterations"):
        keyholder.handle(
            pb.KeyHolderTask(refresh=coordinator.request(gradients, iteration=2).to_proto())
        )


def _uploaded_column(public_context, *, last_level: bool) -> bytes:
    """A party's data column, as uploaded (top level) or switched down to the last level."""
    values = np.resize(_rows("h2")[:, 0], PARAMS.slots)
    if last_level:
        return at_last_level(public_context, values)
    return sealio.serialize(ts.ckks_vector(public_context, values))


@pytest.mark.parametrize(
    ("last_level", "refusal"),
    [
        (False, r"^masked gradient is \d+ bytes; a ciphertext of the job's parameters at this "),
        (True, r"^masked gradient has scale \[1073741824.0\], expected 10750"),
    ],
    ids=["as-uploaded", "switched-down"],
)
def test_an_uploaded_column_passed_off_as_a_gradient_is_refused(
    private_context, public_context, keys, last_level, refusal
):
    """A party's column handed to the key holder as a masked gradient is refused before
    anything is decrypted: a gradient is at the last level with the kernel's exact scale. (A
    coordinator can relabel a switched-down column's scale, which is metadata; the key holder
    then sees the column's slot sum plus the coordinator's mask, and returns it only inside
    encrypted weights: README, "Trust model".)"""
    keyholder = _keyholder(private_context, keys)
    coordinator = _coordinator(public_context, _honest_stats(keyholder, public_context, keys))
    keyholder.handle(pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))
    honest = coordinator.request(_gradients(public_context), iteration=0)
    forged = replace(
        honest,
        masked_gradients=(
            _uploaded_column(public_context, last_level=last_level),
            *honest.masked_gradients[1:],
        ),
    )

    with pytest.raises(InvalidArgument, match=refusal):
        keyholder.handle(pb.KeyHolderTask(refresh=forged.to_proto()))
    # Nothing was stepped: the honest refresh of iteration 0 is still the next one.
    keyholder.handle(pb.KeyHolderTask(refresh=honest.to_proto()))


def test_a_revealed_iterate_is_not_answered(private_context, public_context, keys):
    keyholder = _keyholder(private_context, keys, reveal=True)
    coordinator = _coordinator(public_context, _honest_stats(keyholder, public_context, keys))
    keyholder.handle(pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))
    keyholder.handle(
        pb.KeyHolderTask(
            refresh=coordinator.request(_gradients(public_context), iteration=0).to_proto()
        )
    )
    answer = keyholder.handle(pb.KeyHolderTask(reveal=coordinator.reveal(iteration=0).to_proto()))
    assert list(answer.values.values) == []


# ----- finalize -------------------------------------------------------------------------------


@pytest.fixture
def trained(private_context, public_context, keys) -> tuple[KeyHolder, RefreshCoordinator]:
    keyholder = _keyholder(private_context, keys)
    coordinator = _coordinator(public_context, _honest_stats(keyholder, public_context, keys))
    keyholder.handle(pb.KeyHolderTask(setup=coordinator.setup(_label(public_context)).to_proto()))
    for iteration in range(2):
        request = coordinator.request(_gradients(public_context), iteration=iteration)
        keyholder.handle(pb.KeyHolderTask(refresh=request.to_proto()))
    return keyholder, coordinator


def test_a_substituted_sealing_key_is_refused(trained, keys):
    keyholder, coordinator = trained
    honest = _recipient("h2", keys)
    coordinators_own = replace(honest, seal_public_key=SealingKey().public_bytes)
    finalize = coordinator.finalize(recipients=[_recipient("kh", keys), coordinators_own])
    with pytest.raises(PermissionDenied, match="seal-key signature does not verify"):
        keyholder.handle(pb.KeyHolderTask(finalize=finalize.to_proto()))


@pytest.mark.parametrize("who", [["kh"], ["kh", "h2", "coordinator"]])
def test_the_model_is_sealed_to_the_roster_only(trained, keys, who):
    keyholder, coordinator = trained
    all_keys = {**keys, "coordinator": SigningKey.generate()}
    finalize = coordinator.finalize(recipients=[_recipient(n, all_keys) for n in who])
    with pytest.raises(ProtocolError, match=r"refused: the job's roster is \['h2', 'kh'\]"):
        keyholder.handle(pb.KeyHolderTask(finalize=finalize.to_proto()))


def test_finalize_seals_once_and_signs_every_box(trained, keys):
    keyholder, coordinator = trained
    finalize = coordinator.finalize(recipients=[_recipient(n, keys) for n in ("kh", "h2")])
    sealed = keyholder.handle(pb.KeyHolderTask(finalize=finalize.to_proto())).sealed.models
    assert sorted(m.party for m in sealed) == ["h2", "kh"]
    assert all(len(m.signature) == 64 for m in sealed)
    with pytest.raises(ProtocolError, match="'done' stage, which allows nothing more"):
        keyholder.handle(pb.KeyHolderTask(finalize=finalize.to_proto()))
