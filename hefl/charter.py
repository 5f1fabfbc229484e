"""A job's charter: the roster, parameters and options every party agreed to, signed by the key
holder, and the checks each role runs on it.

The key holder writes the charter (its roster comes from the project's ``sites.json``, the
public directory ``hefl provision`` writes) and signs it together with the hash of the public
context it generated. The coordinator refuses a job whose charter its creator did not sign and
admits only roster sites, each by its certificate. Every other party refuses a job whose
charter is not signed by a roster member as key holder, whose roster differs from the one it was
told to expect, or whose context does not hash to the charter's: a coordinator can neither add a
party nor swap the keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hefl.errors import InvalidArgument, PermissionDenied, ProtocolError
from hefl.identity import ROLE_PARTY, check_name, same_bytes, verify_signature
from hefl.v1 import hefl_pb2 as pb

CHARTER_DOMAIN = "charter"


@dataclass(frozen=True)
class Site:
    """One party of the project directory (``sites.json``)."""

    name: str
    fingerprint: str
    signing_public_key: bytes

    def roster_entry(self) -> pb.RosterEntry:
        return pb.RosterEntry(
            name=self.name,
            fingerprint=self.fingerprint,
            signing_public_key=self.signing_public_key,
        )


def load_sites(path: Path) -> dict[str, Site]:
    """The parties of a project directory, by name.

    Raises:
        InvalidArgument: The file is missing or malformed.
    """
    try:
        entries = json.loads(path.read_text())["sites"]
        return {
            entry["name"]: Site(
                name=check_name("site", entry["name"]),
                fingerprint=entry["fingerprint"],
                signing_public_key=bytes.fromhex(entry["signing_public_key"]),
            )
            for entry in entries
            if entry["role"] == ROLE_PARTY
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidArgument(f"{path} is not a hefl sites.json ({err})") from err


def roster_of(sites: dict[str, Site], names: Iterable[str]) -> list[pb.RosterEntry]:
    """Roster entries for ``names``, sorted by name.

    Raises:
        InvalidArgument: A name is not a party of the project, or appears twice.
    """
    wanted = sorted(names)
    if len(set(wanted)) != len(wanted):
        raise InvalidArgument(f"the roster names a party twice: {wanted}")
    unknown = [n for n in wanted if n not in sites]
    if unknown:
        raise InvalidArgument(f"{unknown} are not parties of this project (see sites.json)")
    return [sites[name].roster_entry() for name in wanted]


def charter_parts(charter: pb.Charter) -> list[bytes]:
    """The charter's fields in a fixed order: what the key holder signs."""
    options = charter.options
    parts = [
        charter.job_id.encode(),
        charter.key_holder.encode(),
        charter.parameter_set.encode(),
        repr(
            (
                options.iterations,
                options.learning_rate,
                options.l2,
                options.sigmoid_interval,
                options.reveal_intermediate,
                options.model or "logistic",
                options.classes,
            )
        ).encode(),
        charter.context_sha256,
    ]
    for entry in charter.roster:
        parts += [entry.name.encode(), entry.fingerprint.encode(), entry.signing_public_key]
    if charter.trust == pb.COLLECTIVE:
        # Signed, so that no coordinator can turn a collective job into a key-holder one (a
        # key-holder charter signs as it always did).
        parts.append(b"trust=collective")
    return parts


def context_digest(context_bytes: bytes) -> bytes:
    return hashlib.sha256(context_bytes).digest()


def key_holder_entry(charter: pb.Charter) -> pb.RosterEntry:
    """The key holder's roster entry.

    Raises:
        ProtocolError: The key holder is not on the roster.
    """
    for entry in charter.roster:
        if entry.name == charter.key_holder:
            return entry
    raise ProtocolError(f"the charter's key holder {charter.key_holder!r} is not on its roster")


def verify_charter(charter: pb.Charter, signature: bytes) -> None:
    """Check that the charter's own key holder signed it.

    Raises:
        ProtocolError: The key holder is not on the roster.
        PermissionDenied: The signature does not verify.
    """
    entry = key_holder_entry(charter)
    verify_signature(entry.signing_public_key, signature, CHARTER_DOMAIN, charter_parts(charter))


def check_expected(
    charter: pb.Charter,
    signature: bytes,
    *,
    job_id: str,
    me: str,
    expected_roster: Sequence[str],
    sites: dict[str, Site],
    trust: pb.TrustMode,
    context_bytes: bytes | None = None,
) -> None:
    """A party's checks of the job it is about to join (and of its context, once downloaded).

    Raises:
        PermissionDenied: Anything differs from what the party was told to expect: the job id,
            the roster's names, a roster site's fingerprint or key, the trust mode (``trust``:
            a roster party cannot sign a collective job down to a key-holder one), the key
            holder's signature, or the context's hash.
    """
    if charter.job_id != job_id:
        raise PermissionDenied(f"the coordinator offered job {charter.job_id!r}, not {job_id!r}")
    names = [entry.name for entry in charter.roster]
    if sorted(names) != sorted(expected_roster) or len(set(names)) != len(names):
        raise PermissionDenied(
            f"job {job_id}: its roster {sorted(names)} is not the expected {sorted(expected_roster)}"
        )
    if me not in names:
        raise PermissionDenied(f"job {job_id}: {me!r} is not on its roster")
    for entry in charter.roster:
        site = sites.get(entry.name)
        if (
            site is None
            or entry.fingerprint != site.fingerprint
            or not same_bytes(entry.signing_public_key, site.signing_public_key)
        ):
            raise PermissionDenied(
                f"job {job_id}: the roster's identity of {entry.name!r} is not the project's"
            )
    offered = pb.COLLECTIVE if charter.trust == pb.COLLECTIVE else pb.KEY_HOLDER
    if offered != trust:
        raise PermissionDenied(
            f"job {job_id}: its charter is in {pb.TrustMode.Name(offered)} mode, and this party "
            f"joins only in {pb.TrustMode.Name(trust)} mode (hefl party --trust)"
        )
    try:
        verify_charter(charter, signature)
    except ProtocolError as err:
        raise PermissionDenied(str(err)) from err
    if context_bytes is not None and not same_bytes(
        context_digest(context_bytes), charter.context_sha256
    ):
        raise PermissionDenied(f"job {job_id}: the context is not the one its key holder signed")
