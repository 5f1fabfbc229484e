"""The review's attacks on collective mode (/tmp/review-collective), replayed against the parties'
real state machines (parties/collective.py, real TenSEAL), each refused by an honest party.

The coordinator is played here, step by step, as coordinator/collective.py plays it, except where
an attack bends it: alone (it holds no roster signing key) or with one roster party ``hc`` whose
signing key and key share it uses. Every test asserts the refusal's type and message and that
the honest party made nothing it should not have (no share, no statistics, no model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import tenseal as ts

from coordinator.collective import training_setup
from coordinator.limits import collective_answer_bytes, task_answer_bytes_cap
from hefl import sealio, signed
from hefl.algorithm import add_bias, label_term, standardize
from hefl.codec import AggregateStats
from hefl.errors import PermissionDenied, ProtocolError
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS, CkksParameters
from hefl.protocols.collective.crs import SeedAgreementParty, SeedAgreementProtocol
from hefl.protocols.collective.keygen import (
    PublicKeyGenProtocol,
    PublicKeyShare,
    RelinKeyGenProtocol,
    RelinKeyRound1Share,
    RelinKeyRound2Share,
    public_context,
)
from hefl.protocols.collective.keyswitch import ciphertext_of
from hefl.protocols.collective.seal_layout import CiphertextPolys, vector_of
from hefl.protocols.collective.secret import SecretKeyShare
from hefl.protocols.collective.step import label_term_bytes, stats_protocol
from hefl.protocols.stats import StatsShare
from hefl.v1 import hefl_pb2 as pb
from parties.collective import STEPS, CollectiveMember, Roster, box_bytes
from parties.identity import SigningKey
from parties.sealing import SealingKey, seal

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]
JOB = "job-attacked"
NAMES = ("ha", "hb", "hc")
FEATURES = ("a", "b", "c")

Outputs = dict[str, dict[str, bytes]]


class Trial:
    """Three real roster members and an honest relay of their steps (coordinator/collective.py)."""

    def __init__(
        self, params: CkksParameters = PARAMS, features: tuple[str, ...] = FEATURES
    ) -> None:
        self.params, self.features = params, features
        self.sizes: dict[str, int] = {}  # the largest answer of each step, serialized
        rng = np.random.default_rng(5)
        self.signing = {n: SigningKey.generate() for n in NAMES}
        self.sealing = {n: SealingKey() for n in NAMES}
        self.roster = Roster({n: self.signing[n].public_bytes for n in NAMES})
        self.data = {n: rng.normal(size=(30 + 5 * i, len(features))) for i, n in enumerate(NAMES)}
        self.labels = {n: (self.data[n][:, 0] > 0).astype(float) for n in NAMES}
        self.protocol = stats_protocol(len(features), params)
        self.members = {n: self._member(n) for n in NAMES}
        self.made_stats: list[str] = []

    def _member(self, name: str) -> CollectiveMember:
        member = CollectiveMember(
            job_id=JOB,
            name=name,
            params=self.params,
            roster=self.roster,
            features=self.features,
            options=pb.TrainingOptions(iterations=2),
            signing_key=self.signing[name],
            sealing_key=self.sealing[name],
        )

        def make_stats(context: ts.Context) -> StatsShare:
            self.made_stats.append(name)
            return self.protocol.gen_share(context, self.data[name])

        def make_label_term(context: ts.Context, summary: Any) -> bytes:
            columns = add_bias(standardize(self.data[name], summary.mean, summary.std))
            return label_term_bytes(context, label_term(columns, self.labels[name]))

        member.make_stats = make_stats
        member.make_label_term = make_label_term
        return member

    def ask(
        self, step: str, inputs: list[pb.NamedBytes] | Callable[[str], pb.CollectiveTask]
    ) -> Outputs:
        out: Outputs = {}
        for name, member in self.members.items():
            task = inputs(name) if callable(inputs) else pb.CollectiveTask(inputs=inputs)
            task.step = step
            result = member.handle(pb.KeyHolderTask(collective=task))
            self.sizes[step] = max(self.sizes.get(step, 0), result.ByteSize())
            out[name] = {o.name: o.data for o in result.collective.outputs}
        return out

    # ----- the honest relay, step by step ------------------------------------------------------

    def seed(self) -> Outputs:
        committed = self.ask("seed-commit", [])
        return self.ask("seed-reveal", signed_inputs(committed, "commitment"))

    def key_commitments(self, revealed: Outputs) -> Outputs:
        return self.ask("keys", signed_inputs(revealed, "reveal"))

    def key_shares(self, committed: Outputs) -> Outputs:
        return self.ask("keys-reveal", signed_inputs(committed, "commitment"))

    def round2(self, shares: Outputs) -> Outputs:
        return self.ask(
            "relin-key-2",
            named("public-key", pick(shares, "public-key"))
            + named("relin-key-1", pick(shares, "relin-key-1")),
        )

    def context_of(self, shares: Outputs, second: Outputs) -> bytes:
        """The context the coordinator builds from the relayed shares."""
        job = self.members["ha"].job
        ckg, rkg = PublicKeyGenProtocol(job), RelinKeyGenProtocol(job)
        public = ckg.aggregate_shares(
            {p: PublicKeyShare.from_bytes(shares[p]["public-key"], job) for p in NAMES}
        )
        first = rkg.aggregate_round1(
            {p: RelinKeyRound1Share.from_bytes(shares[p]["relin-key-1"], job) for p in NAMES}
        )
        aggregate = rkg.aggregate_round2(
            first, {p: RelinKeyRound2Share.from_bytes(second[p]["relin-key-2"], job) for p in NAMES}
        )
        context = public_context(job, ckg.public_key(public), rkg.relin_key(first, aggregate))
        return context.serialize(save_secret_key=False, save_galois_keys=False)

    def keys(self) -> Outputs:
        """Setup up to the confirmed context; every party's context answer."""
        shares = self.key_shares(self.key_commitments(self.seed()))
        second = self.round2(shares)
        context = self.context_of(shares, second)
        return self.ask(
            "context",
            signed_inputs(second, "relin-key-2") + [pb.NamedBytes(name="context/", data=context)],
        )

    def stats_released(self) -> None:
        checked = self.keys()
        committed = self.ask(
            "stats-commit", named("context-signature", pick(checked, "context-signature"))
        )
        self.ask("stats-release", signed_inputs(committed, "stats-commitment"))

    def stats_task(self) -> pb.CollectiveTask:
        hellos = [
            pb.PartyHello(
                name=n,
                seal_public_key=self.sealing[n].public_bytes,
                seal_key_signature=self.signing[n].sign(
                    signed.SEAL_KEY, signed.seal_key_parts(JOB, n, self.sealing[n].public_bytes)
                ),
            )
            for n in NAMES
        ]
        stats = [self.members[n].stats_share for n in NAMES]
        return pb.CollectiveTask(
            parties=hellos,
            stats=[s.to_proto(job_id=JOB, party=n) for n, s in zip(NAMES, stats, strict=True) if s],
        )


def named(kind: str, by_party: Mapping[str, bytes]) -> list[pb.NamedBytes]:
    return [pb.NamedBytes(name=f"{kind}/{p}", data=d) for p, d in sorted(by_party.items())]


def pick(outputs: Outputs, name: str) -> dict[str, bytes]:
    return {p: o[name] for p, o in outputs.items()}


def signed_inputs(outputs: Outputs, kind: str) -> list[pb.NamedBytes]:
    return named(kind, pick(outputs, kind)) + named(
        f"{kind}-signature", pick(outputs, f"{kind}-signature")
    )


def quarter_c1(trial: Trial, context: ts.Context, honest: list[bytes], size: int) -> bytes:
    """The review's crafted ciphertext: its c1 makes the sum's c1 = round(Q/4), so a party's
    decryption share of the sum is (Q/4) s_i + small noise, its key share in the clear."""
    ring = trial.members["ha"].job.ring
    others = [ciphertext_of(ts.ckks_vector_from(context, c)) for c in honest]
    quarter = ring.from_integers(
        np.array([ring.modulus(ring.top_rows) // 4], dtype=object), ring.top_rows
    )
    c1 = np.repeat(quarter, ring.n, 1)
    for other in others:
        c1 = ring.sub(c1, other.polys[1])
    crafted = CiphertextPolys(
        others[0].parms_id, others[0].scale, np.stack([others[0].polys[0], c1])
    )
    return sealio.serialize(vector_of(context, crafted, size=size))


@pytest.fixture
def trial() -> Trial:
    return Trial()


# ----- finding 1: setup messages are signed and committed; contexts are confirmed --------------


def test_the_coordinator_alone_cannot_forge_the_other_parties_seed(trial: Trial) -> None:
    """rogue_key.py, first move: the coordinator writes hb's and hc's seed commitments itself."""
    ha = trial.members["ha"]
    own = ha.handle(pb.KeyHolderTask(collective=pb.CollectiveTask(step="seed-commit")))
    outputs = {o.name: o.data for o in own.collective.outputs}
    protocol = SeedAgreementProtocol(JOB, NAMES)
    coordinator = SigningKey.generate()
    commitments = {"ha": outputs["commitment"]}
    signatures = {"ha": outputs["commitment-signature"]}
    for name in ("hb", "hc"):
        commitments[name] = SeedAgreementParty(protocol, name).commitment().to_bytes()
        signatures[name] = coordinator.sign(
            signed.COLLECTIVE_SETUP,
            signed.collective_parts(JOB, "seed-commit", name, commitments[name]),
        )
    task = pb.CollectiveTask(
        step="seed-reveal",
        inputs=named("commitment", commitments) + named("commitment-signature", signatures),
    )
    with pytest.raises(
        PermissionDenied,
        match=r"seed-reveal: the commitment relayed as 'hb''s is not signed by 'hb'",
    ):
        ha.handle(pb.KeyHolderTask(collective=task))
    assert ha.stage == "seed-reveal"


def test_a_rogue_public_key_share_is_refused(trial: Trial) -> None:
    """rogue_key.py, the key itself: hb's public-key share replaced by -a s_c + e - p_ha (so the
    sum is the coordinator's key s_c). Even signed by hb (a colluding party), it is not the share
    hb committed to before it saw ha's: every honest party refuses to go on."""
    committed = trial.key_commitments(trial.seed())
    shares = trial.key_shares(committed)
    job = trial.members["ha"].job
    ckg = PublicKeyGenProtocol(job)
    s_c = SecretKeyShare.generate(PARAMS)
    p_ha = PublicKeyShare.from_bytes(shares["ha"]["public-key"], job)
    rogue = PublicKeyShare(ckg.tag, job.ring.sub(ckg.gen_share(s_c).poly, p_ha.poly))
    public = pick(shares, "public-key") | {"hb": rogue.to_bytes()}
    task = pb.CollectiveTask(
        step="relin-key-2",
        inputs=named("public-key", public) + named("relin-key-1", pick(shares, "relin-key-1")),
    )
    for name in ("ha", "hc"):
        with pytest.raises(
            ProtocolError,
            match=r"relin-key-2: the key shares relayed as 'hb''s differ from its signed commitment",
        ):
            trial.members[name].handle(pb.KeyHolderTask(collective=task))
        assert trial.members[name].stage == "relin-key-2"


def test_key_shares_are_revealed_only_after_every_signed_commitment(trial: Trial) -> None:
    """A party shows its shares only given all n commitments, each signed by its party: the
    coordinator cannot get ha's share first by relaying forged commitments for the others."""
    committed = trial.key_commitments(trial.seed())
    forged = dict(pick(committed, "commitment-signature"))
    forged["hc"] = trial.signing["hb"].sign(
        signed.COLLECTIVE_SETUP,
        signed.collective_parts(JOB, "keys", "hc", committed["hc"]["commitment"]),
    )
    task = pb.CollectiveTask(
        step="keys-reveal",
        inputs=named("commitment", pick(committed, "commitment"))
        + named("commitment-signature", forged),
    )
    with pytest.raises(
        PermissionDenied,
        match=r"keys-reveal: the commitment relayed as 'hc''s is not signed by 'hc'",
    ):
        trial.members["ha"].handle(pb.KeyHolderTask(collective=task))
    missing = pb.CollectiveTask(
        step="keys-reveal", inputs=[i for i in task.inputs if not i.name.endswith("/hc")]
    )
    with pytest.raises(ProtocolError, match=r"keys-reveal: no commitment of \['hc'\]"):
        trial.members["ha"].handle(pb.KeyHolderTask(collective=missing))


def test_two_contexts_shown_to_two_parties_make_both_refuse_to_submit_statistics(
    trial: Trial,
) -> None:
    """Split view: hc (colluding) signs two round-2 shares; the coordinator shows ha the first
    and hb the second, so each builds (and accepts) another context. At the confirmation, each
    sees a signature over a digest that is not its own: neither encrypts its statistics."""
    shares = trial.key_shares(trial.key_commitments(trial.seed()))
    second = trial.round2(shares)
    first = RelinKeyRound2Share.from_bytes(second["hc"]["relin-key-2"], trial.members["hc"].job)
    polys = first.polys.copy()
    polys[0, 0, 0, 0] = (int(polys[0, 0, 0, 0]) + 1) % trial.members["hc"].job.ring.primes[0]
    other = RelinKeyRound2Share(first.tag, polys).to_bytes()  # hc's second, also signed
    views = {
        "ha": second,
        "hb": second
        | {
            "hc": {
                "relin-key-2": other,
                "relin-key-2-signature": trial.signing["hc"].sign(
                    signed.COLLECTIVE_SETUP,
                    signed.collective_parts(JOB, "relin-key-2", "hc", other),
                ),
            }
        },
        "hc": second,
    }
    contexts = {n: trial.context_of(shares, views[n]) for n in NAMES}
    assert contexts["ha"] != contexts["hb"]
    checked = trial.ask(
        "context",
        lambda n: pb.CollectiveTask(
            inputs=signed_inputs(views[n], "relin-key-2")
            + [pb.NamedBytes(name="context/", data=contexts[n])]
        ),
    )
    assert checked["ha"]["context-sha256"] != checked["hb"]["context-sha256"]
    task = pb.CollectiveTask(
        step="stats-commit", inputs=named("context-signature", pick(checked, "context-signature"))
    )
    for name, other_party in (("ha", "hb"), ("hb", "ha")):
        with pytest.raises(
            PermissionDenied,
            match=rf"the context relayed as '{other_party}''s is not signed by '{other_party}'",
        ):
            trial.members[name].handle(pb.KeyHolderTask(collective=task))
        assert trial.members[name].context is None
        assert not trial.members[name].stats_released.is_set()
    assert trial.made_stats == []


# ----- finding 2: statistics are committed before any is released -------------------------------


def test_statistics_crafted_after_seeing_the_others_get_no_decryption_share(trial: Trial) -> None:
    """stats_keyleak.py: hc, shown ha's and hb's statistics, signs a share whose c1 makes the
    sum's c1 = Q/4 (ha's decryption share would be its key share). hc committed to its real
    statistics before it saw theirs; the crafted share is not that one: refused by name."""
    trial.stats_released()
    context = trial.members["ha"].context
    assert context is not None
    honest = trial.stats_task()
    pieces = []
    for index, size in enumerate(trial.protocol.piece_sizes):
        others = [honest.stats[i].ciphertexts[index] for i in (0, 1)]
        pieces.append(quarter_c1(trial, context, others, size))
    crafted = StatsShare(pieces=tuple(pieces), rows=honest.stats[2].rows)
    crafted = replace(
        crafted,
        signature=trial.signing["hc"].sign(
            signed.STATS, signed.stats_parts(JOB, "hc", crafted.rows, crafted.pieces)
        ),
    )
    honest.stats[2].CopyFrom(crafted.to_proto(job_id=JOB, party="hc"))
    honest.step = "stats"
    for name in ("ha", "hb"):
        with pytest.raises(
            ProtocolError,
            match=r"stats: the statistics relayed as 'hc''s differ from its signed commitment; "
            r"no decryption share",
        ):
            trial.members[name].handle(pb.KeyHolderTask(collective=honest))
        assert trial.members[name].stage == "stats"


def test_statistics_are_released_only_after_every_commitment(trial: Trial) -> None:
    """Without hc's commitment (or with hb's forged), ha's statistics do not go out."""
    checked = trial.keys()
    committed = trial.ask(
        "stats-commit", named("context-signature", pick(checked, "context-signature"))
    )
    ha = trial.members["ha"]
    inputs = signed_inputs(committed, "stats-commitment")
    dropped = [i for i in inputs if not i.name.endswith("/hc")]
    with pytest.raises(ProtocolError, match=r"stats-release: no stats-commitment of \['hc'\]"):
        ha.handle(
            pb.KeyHolderTask(collective=pb.CollectiveTask(step="stats-release", inputs=dropped))
        )
    forged = [
        pb.NamedBytes(name=i.name, data=bytes(64))
        if i.name == "stats-commitment-signature/hb"
        else i
        for i in inputs
    ]
    with pytest.raises(
        PermissionDenied, match=r"commitment relayed as 'hb''s is not signed by 'hb'"
    ):
        ha.handle(
            pb.KeyHolderTask(collective=pb.CollectiveTask(step="stats-release", inputs=forged))
        )
    assert not ha.stats_released.is_set()


# ----- finding 3: label terms likewise ------------------------------------------------------------


def test_a_label_term_crafted_after_seeing_the_others_gets_no_share(trial: Trial) -> None:
    """label_keyleak.py: hc signs a label term whose c1 makes the sum's c1 = Q/4 (ha's
    EncToShare share would be its key share). It is not the term hc committed to: refused."""
    trial.stats_released()
    decrypted = trial.ask("stats", lambda _: trial.stats_task())
    opened = trial.ask(
        "stats-open",
        lambda n: pb.CollectiveTask(
            inputs=[
                pb.NamedBytes(name=f"box/{s}", data=decrypted[s][f"box/{n}"])
                for s in NAMES
                if s != n
            ]
        ),
    )
    assert set(opened) == set(NAMES)
    committed = trial.ask("label-commit", [])
    trial.ask(
        "label-release",
        named("label-term-sha256", pick(committed, "label-term-sha256"))
        + named("label-term-signature", pick(committed, "label-term-signature")),
    )
    ha = trial.members["ha"]
    assert ha.context is not None and ha.summary is not None and ha.hyper is not None
    terms = {n: trial.members[n].label_term or b"" for n in NAMES}
    terms["hc"] = quarter_c1(trial, ha.context, [terms["ha"], terms["hb"]], len(FEATURES) + 1)
    signatures = {
        n: trial.signing[n].sign(signed.LABEL_TERM, signed.label_term_parts(JOB, n, terms[n]))
        for n in NAMES
    }
    task = pb.CollectiveTask(
        step="setup",
        setup=training_setup(ha.hyper, rows=ha.summary.count, columns=len(FEATURES) + 1),
        inputs=named("label-term", terms) + named("label-term-signature", signatures),
    )
    for name in ("ha", "hb"):
        with pytest.raises(
            ProtocolError,
            match=r"setup: the label term relayed as 'hc''s differs from its signed commitment; "
            r"no EncToShare share",
        ):
            trial.members[name].handle(pb.KeyHolderTask(collective=task))
        assert trial.members[name].stage == "setup"


def test_the_honest_relay_reaches_training(trial: Trial) -> None:
    """The same relay, untouched, gets every party through the commitments (so the refusals
    above are the attacks', not the relay's)."""
    trial.stats_released()
    assert sorted(trial.made_stats) == sorted(NAMES)
    decrypted = trial.ask("stats", lambda _: trial.stats_task())
    assert all(set(o) == {f"box/{p}" for p in NAMES if p != n} for n, o in decrypted.items())


# ----- finding 7: the model's payloads are checked, and every party confirms the same model -------

COLUMNS = len(FEATURES) + 1


def at_model_stage(trial: Trial) -> dict[str, np.ndarray]:
    """Every member where training leaves it: at ``model``, with its velocity mask B_i (the
    state a real run leaves; the refreshes are tests/test_collective_job.py's). The true
    velocity v, whose masked form the coordinator holds, is returned with the masks."""
    rng = np.random.default_rng(9)
    masks = {n: rng.normal(size=COLUMNS) for n in NAMES}
    summary = AggregateStats.of_rows(rng.normal(size=(20, len(FEATURES))))
    for name, member in trial.members.items():
        member._stage = STEPS.index("model")
        member._setup = pb.TrainingSetup(columns=COLUMNS, iterations=2)
        member._masks = (np.zeros(COLUMNS), masks[name], np.zeros(COLUMNS))
        member.summary = summary
    return {"v": rng.normal(size=COLUMNS), **masks}


def model_task(trial: Trial, values: list[float]) -> pb.KeyHolderTask:
    return pb.KeyHolderTask(
        collective=pb.CollectiveTask(
            step="model", values=values, parties=trial.stats_task().parties
        )
    )


def box_from(trial: Trial, sender: str, recipient: str, payload: bytes) -> bytes:
    """A box a (malicious) roster party seals and signs itself, as parties/collective.py does."""
    box = seal(
        trial.sealing[recipient].public_bytes,
        payload,
        associated=f"{JOB}/model/{sender}/{recipient}".encode(),
    )
    signature = trial.signing[sender].sign(
        signed.COLLECTIVE_BOX,
        signed.collective_box_parts(
            JOB, "model", sender, recipient, box.ephemeral_public_key, box.nonce, box.ciphertext
        ),
    )
    return box_bytes(box, signature)


def open_task(boxes: dict[str, dict[str, bytes]], recipient: str) -> pb.KeyHolderTask:
    return pb.KeyHolderTask(
        collective=pb.CollectiveTask(
            step="model-open",
            inputs=[
                pb.NamedBytes(name=f"box/{s}", data=boxes[s][f"box/{recipient}"])
                for s in NAMES
                if s != recipient
            ],
        )
    )


@pytest.mark.parametrize("values", [[0.0] * (COLUMNS - 1), [0.0, float("nan"), 0.0, 0.0]])
def test_a_masked_model_of_the_wrong_shape_or_not_finite_is_refused(trial: Trial, values) -> None:
    at_model_stage(trial)
    with pytest.raises(ProtocolError, match=rf"model: a masked model of {len(values)} values"):
        trial.members["ha"].handle(model_task(trial, values))
    assert trial.members["ha"].stage == "model"


@pytest.mark.parametrize(
    ("mask", "why"),
    [
        ([1.0] * (COLUMNS + 1), "too long"),
        ([1.0, float("inf"), 1.0, 1.0], "infinite"),
        ([[1.0, 1.0], [1.0, 1.0]], "not a vector"),
    ],
)
def test_a_mask_share_that_is_not_columns_finite_values_is_refused_by_name(
    trial: Trial, mask, why
) -> None:
    state = at_model_stage(trial)
    masked = (state["v"] + sum(state[n] for n in NAMES)).tolist()
    boxes = {
        n: {
            o.name: o.data
            for o in trial.members[n].handle(model_task(trial, masked)).collective.outputs
        }
        for n in NAMES
    }
    digest = hashlib.sha256(np.asarray(masked, dtype="<f8").tobytes()).hexdigest()
    payload = json.dumps({"masked_model_sha256": digest, "velocity_mask": mask}).encode()
    boxes["hc"]["box/ha"] = box_from(trial, "hc", "ha", payload)
    with pytest.raises(
        ProtocolError, match=rf"model-open: 'hc''s mask share is not {COLUMNS} finite values"
    ):
        trial.members["ha"].handle(open_task(boxes, "ha"))
    assert trial.members["ha"].model is None, why


def test_a_party_that_sends_two_parties_different_masks_is_found_and_no_one_keeps_a_model(
    trial: Trial,
) -> None:
    """hc seals its true mask to ha and another (well formed) to hb: both unmask, each to
    another model; at model-confirm each sees the other's signed digest differ and keeps none."""
    state = at_model_stage(trial)
    masked = (state["v"] + sum(state[n] for n in NAMES)).tolist()
    boxes = {
        n: {
            o.name: o.data
            for o in trial.members[n].handle(model_task(trial, masked)).collective.outputs
        }
        for n in NAMES
    }
    digest = hashlib.sha256(np.asarray(masked, dtype="<f8").tobytes()).hexdigest()
    other = (state["hc"] + 0.5).tolist()
    payload = json.dumps({"masked_model_sha256": digest, "velocity_mask": other}).encode()
    boxes["hc"]["box/hb"] = box_from(trial, "hc", "hb", payload)
    opened = {
        n: {o.name: o.data for o in trial.members[n].handle(open_task(boxes, n)).collective.outputs}
        for n in NAMES
    }
    task = pb.KeyHolderTask(
        collective=pb.CollectiveTask(
            step="model-confirm", inputs=signed_inputs(opened, "model-sha256")
        )
    )
    with pytest.raises(
        ProtocolError,
        match=r"model-confirm: parties \['hb'\] unmasked another model than 'ha'; no model",
    ):
        trial.members["ha"].handle(task)
    with pytest.raises(
        ProtocolError, match=r"parties \['ha', 'hc'\] unmasked another model than 'hb'"
    ):
        trial.members["hb"].handle(task)
    assert trial.members["ha"].model is None and trial.members["hb"].model is None


def test_the_same_model_everywhere_is_kept_and_is_the_true_one(trial: Trial) -> None:
    state = at_model_stage(trial)
    masked = (state["v"] + sum(state[n] for n in NAMES)).tolist()
    boxes = {
        n: {
            o.name: o.data
            for o in trial.members[n].handle(model_task(trial, masked)).collective.outputs
        }
        for n in NAMES
    }
    opened = {
        n: {o.name: o.data for o in trial.members[n].handle(open_task(boxes, n)).collective.outputs}
        for n in NAMES
    }
    task = pb.KeyHolderTask(
        collective=pb.CollectiveTask(
            step="model-confirm", inputs=signed_inputs(opened, "model-sha256")
        )
    )
    for member in trial.members.values():
        member.handle(task)
        assert member.model is not None
        weights = member.model["weights"]
        assert isinstance(weights, list)
        assert np.allclose(weights, state["v"], atol=1e-12)


# ----- finding 9: the coordinator's answer cap holds every honest collective answer ---------------


@pytest.mark.parametrize("name", ["n8192-depth4", "n16384-depth4"])
def test_every_setup_and_statistics_answer_fits_the_answer_cap_with_two_columns(name: str) -> None:
    """Real answers (keys, round 2, statistics boxes) of a job with one feature (columns=2),
    measured serialized, against the cap CompleteTask enforces. The refresh's and the model's
    answers are bounded by the cap's refresh and model terms (tests/test_collective_job.py)."""
    params = PARAMETER_SETS[name]
    trial = Trial(params=params, features=("a",))
    trial.stats_released()
    trial.ask("stats", lambda _: trial.stats_task())
    cap = task_answer_bytes_cap(params, columns=2, parties=len(NAMES), iterations=1)
    largest = max(trial.sizes.values())
    assert largest <= cap, trial.sizes
    assert max(trial.sizes["keys-reveal"], trial.sizes["stats"]) <= collective_answer_bytes(
        params, columns=2, parties=len(NAMES)
    )
