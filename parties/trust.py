"""What a party trusts, and its checks of everything the coordinator relays.

A provisioned party (:class:`Provisioned`) trusts the project directory (``sites.json``) and the
roster it was told to expect, nothing the coordinator says: it verifies the job's charter, the
context's hash and the key holder's signature on its model. Without a kit (``--insecure``) a
party has nothing to check against (:class:`Unverified`): it says so once and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hefl import signed
from hefl.charter import (
    CHARTER_DOMAIN,
    charter_parts,
    check_expected,
    context_digest,
    key_holder_entry,
    load_sites,
    roster_of,
)
from hefl.errors import InvalidArgument, PermissionDenied
from hefl.identity import verify_signature
from hefl.v1 import hefl_pb2 as pb
from parties.identity import PartyIdentity, SigningKey

log = logging.getLogger("hefl.party")

SITES_FILE = "sites.json"


class Provisioned:
    """A party with a startup kit: it signs with its long-term key and checks every relay."""

    def __init__(
        self, identity: PartyIdentity, *, roster: Sequence[str], sites: Path | None, kit: Path
    ) -> None:
        self.identity = identity
        self.signing_key = identity.signing_key
        if not roster:
            raise InvalidArgument("name the job's parties with --roster (see sites.json)")
        self._sites = load_sites(sites or kit / SITES_FILE)
        self._roster = sorted(set(roster) | {identity.name})
        self._charter: pb.Charter | None = None

    def charter(
        self,
        *,
        job_id: str,
        parameter_set: str,
        options: pb.TrainingOptions,
        context_bytes: bytes | None,
    ) -> tuple[pb.Charter, bytes]:
        """Key holder (collective mode: the initiator, ``context_bytes`` None): the job's
        charter over its roster and context, and its signature."""
        charter = pb.Charter(
            job_id=job_id,
            key_holder=self.identity.name,
            roster=roster_of(self._sites, self._roster),
            parameter_set=parameter_set,
            options=options,
            context_sha256=b"" if context_bytes is None else context_digest(context_bytes),
            trust=pb.KEY_HOLDER if context_bytes is not None else pb.COLLECTIVE,
        )
        self._charter = charter
        return charter, self.signing_key.sign(CHARTER_DOMAIN, charter_parts(charter))

    def roster_keys(self) -> dict[str, bytes]:
        """The charter's parties and their signing keys."""
        assert self._charter is not None
        return {e.name: e.signing_public_key for e in self._charter.roster}

    def check_offer(self, info: pb.JobInfo, *, job_id: str, trust: pb.TrustMode) -> None:
        """Joining party: the job is the one it was told to expect, in the trust mode it was
        told to expect (``hefl party --trust``), signed by its key holder.

        Raises:
            PermissionDenied: See :func:`hefl.charter.check_expected`.
        """
        if not info.HasField("charter"):
            raise PermissionDenied(f"job {job_id} comes without its key holder's charter")
        check_expected(
            info.charter,
            info.charter_signature,
            job_id=job_id,
            me=self.identity.name,
            expected_roster=self._roster,
            sites=self._sites,
            trust=trust,
        )
        self._charter = info.charter

    def check_context(self, context_bytes: bytes) -> None:
        """Raises PermissionDenied unless the context is the one the charter names."""
        assert self._charter is not None, "check_offer first"
        if context_digest(context_bytes) != self._charter.context_sha256:
            raise PermissionDenied(
                f"job {self._charter.job_id}: the context is not the one its key holder signed"
            )

    def check_model(self, sealed: pb.SealedModel) -> None:
        """Raises PermissionDenied unless the job's key holder sealed this model."""
        assert self._charter is not None
        verify_signature(
            key_holder_entry(self._charter).signing_public_key,
            sealed.signature,
            signed.MODEL,
            signed.model_parts(
                self._charter.job_id,
                sealed.party,
                sealed.ephemeral_public_key,
                sealed.nonce,
                sealed.ciphertext,
            ),
        )


class Unverified:
    """A party without a kit (``--insecure``): it signs with a key made for this run, which
    nobody can tie to it, and cannot check what the coordinator relays."""

    def __init__(self) -> None:
        self.signing_key = SigningKey.generate()
        log.warning(
            "running without a startup kit (--insecure): the coordinator can impersonate any "
            "party, swap the job's keys and forge the model; use `hefl provision` and --kit"
        )

    def charter(
        self,
        *,
        job_id: str,
        parameter_set: str,
        options: pb.TrainingOptions,
        context_bytes: bytes | None,
    ) -> None:
        return None

    def roster_keys(self) -> None:
        return None

    def check_offer(self, info: pb.JobInfo, *, job_id: str, trust: pb.TrustMode) -> None:
        """Raises PermissionDenied for collective mode: without kits, there is none."""
        if trust == pb.COLLECTIVE:
            raise PermissionDenied(
                f"job {job_id}: collective mode needs the project's kits (--kit, --roster); "
                f"without them, join with --trust key-holder"
            )

    def check_context(self, context_bytes: bytes) -> None:
        pass

    def check_model(self, sealed: pb.SealedModel) -> None:
        pass


Trust = Provisioned | Unverified
