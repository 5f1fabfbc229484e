"""A joining party's checks of what the coordinator relays: the charter, the context and the
model. Each tampering a coordinator could try is refused with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hefl import signed
from hefl.errors import PermissionDenied
from hefl.v1 import hefl_pb2 as pb
from parties.identity import PartyIdentity, SigningKey
from parties.sealing import SealingKey, seal
from parties.trust import Provisioned
from tools.provision import provision

ROSTER = ["kh", "h2", "h3"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    provision(root, parties=[*ROSTER, "mallory"])
    return root


def _trust(project: Path, site: str, roster: list[str] = ROSTER) -> Provisioned:
    return Provisioned(
        PartyIdentity.load(project / site), roster=roster, sites=None, kit=project / site
    )


def _offer(
    project: Path, context: bytes = b"public context", roster: list[str] = ROSTER
) -> pb.JobInfo:
    charter, signature = _trust(project, "kh", roster).charter(
        job_id="job-1",
        parameter_set="n8192-depth4",
        options=pb.TrainingOptions(iterations=7),
        context_bytes=context,
    )
    return pb.JobInfo(job_id="job-1", charter=charter, charter_signature=signature)


def test_the_expected_job_passes(project):
    h2 = _trust(project, "h2")
    h2.check_offer(_offer(project), job_id="job-1", trust=pb.KEY_HOLDER)
    h2.check_context(b"public context")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("add a party", "is not the expected"),
        ("drop a party", "is not the expected"),
        ("other job", "not 'job-1'"),
        ("change options", "signature does not verify"),
        ("swap a signing key", "identity of 'h3' is not the project's"),
        ("sign as another roster party", "signature does not verify"),
        ("no charter", "without its key holder's charter"),
    ],
)
def test_a_tampered_offer_is_refused(project, tamper, message):
    offer = _offer(project)
    charter = offer.charter
    if tamper == "add a party":
        mallory = _offer(project, roster=[*ROSTER, "mallory"])
        offer = mallory  # genuinely signed by kh, but not the roster h2 was told to expect
    elif tamper == "drop a party":
        offer = _offer(project, roster=["kh", "h2"])
    elif tamper == "other job":
        charter.job_id = "job-2"
    elif tamper == "change options":
        charter.options.iterations = 500
    elif tamper == "swap a signing key":
        charter.roster[
            [e.name for e in charter.roster].index("h3")
        ].signing_public_key = SigningKey.generate().public_bytes
    elif tamper == "sign as another roster party":
        charter.key_holder = "h3"
        offer.charter_signature = _trust(project, "kh").signing_key.sign(
            "charter", [b"something else"]
        )
    else:
        offer.ClearField("charter")
    with pytest.raises(PermissionDenied, match=message):
        _trust(project, "h2").check_offer(offer, job_id="job-1", trust=pb.KEY_HOLDER)


def test_a_swapped_context_is_refused(project):
    h2 = _trust(project, "h2")
    h2.check_offer(_offer(project), job_id="job-1", trust=pb.KEY_HOLDER)
    with pytest.raises(PermissionDenied, match="not the one its key holder signed"):
        h2.check_context(b"the coordinator's own context")


def test_only_a_model_the_key_holder_sealed_opens(project):
    h2 = _trust(project, "h2")
    h2.check_offer(_offer(project), job_id="job-1", trust=pb.KEY_HOLDER)
    key = SealingKey()
    box = seal(key.public_bytes, b"model", associated=b"job-1/h2")

    def sealed(signer: SigningKey) -> pb.SealedModel:
        return pb.SealedModel(
            party="h2",
            ephemeral_public_key=box.ephemeral_public_key,
            nonce=box.nonce,
            ciphertext=box.ciphertext,
            signature=signer.sign(
                signed.MODEL,
                signed.model_parts(
                    "job-1", "h2", box.ephemeral_public_key, box.nonce, box.ciphertext
                ),
            ),
        )

    h2.check_model(sealed(_trust(project, "kh").signing_key))
    for forger in (SigningKey.generate(), _trust(project, "h3").signing_key):
        with pytest.raises(PermissionDenied, match="model signature does not verify"):
            h2.check_model(sealed(forger))


def test_a_roster_party_cannot_sign_a_collective_job_down_to_key_holder(project):
    """downgrade.py: h3 (on the roster, with the coordinator) offers h2 a KEY_HOLDER charter of
    the expected job and roster, signed by itself, over a context of its own. h2, joining in
    collective mode (``hefl party``'s default), refuses it before anything else happens."""
    charter, signature = _trust(project, "h3").charter(
        job_id="job-1",
        parameter_set="n8192-depth4",
        options=pb.TrainingOptions(iterations=7),
        context_bytes=b"h3's own private context",
    )
    offer = pb.JobInfo(job_id="job-1", charter=charter, charter_signature=signature)
    h2 = _trust(project, "h2")
    with pytest.raises(
        PermissionDenied,
        match="its charter is in KEY_HOLDER mode, and this party joins only in COLLECTIVE mode",
    ):
        h2.check_offer(offer, job_id="job-1", trust=pb.COLLECTIVE)
    h2.check_offer(offer, job_id="job-1", trust=pb.KEY_HOLDER)  # as asked for, it passes


def test_a_collective_charter_is_refused_by_a_key_holder_party_and_taken_by_a_collective_one(
    project,
):
    charter, signature = _trust(project, "kh").charter(
        job_id="job-1",
        parameter_set="n8192-depth4",
        options=pb.TrainingOptions(iterations=7),
        context_bytes=None,
    )
    offer = pb.JobInfo(job_id="job-1", charter=charter, charter_signature=signature)
    _trust(project, "h2").check_offer(offer, job_id="job-1", trust=pb.COLLECTIVE)
    with pytest.raises(PermissionDenied, match="COLLECTIVE mode, and this party joins only in"):
        _trust(project, "h3").check_offer(offer, job_id="job-1", trust=pb.KEY_HOLDER)
