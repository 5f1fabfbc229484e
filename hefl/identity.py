"""Who is who: site certificates, TLS credentials and signatures, as every role checks them.

A project is provisioned once (``hefl provision``, :mod:`tools.provision`): a root CA, one
certificate per site, and for every party a long-term Ed25519 signing key. Each site receives a
*startup kit*, a folder holding::

    ca.pem        the project's root certificate (trust anchor of every connection)
    tls.pem       this site's certificate: CN = site name, OU = role (coordinator | party)
    tls.key       its private key (0600)
    signing.key   parties only: the Ed25519 key that signs what the party vouches for (0600)

Every connection is mutual TLS under the project's CA. The coordinator learns a caller's name and
role from the certificate the TLS handshake verified, never from a field in a request
(:func:`peer_of`). Signatures are Ed25519 from ``cryptography``; what is signed is always the
SHA-256 of a domain-separated, length-prefixed encoding (:func:`digest`), so no signed message
can be replayed as another kind.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from hefl.errors import InvalidArgument, PermissionDenied

log = logging.getLogger("hefl.identity")

ROLE_COORDINATOR = "coordinator"
ROLE_PARTY = "party"
ROLES = (ROLE_COORDINATOR, ROLE_PARTY)

CA_FILE = "ca.pem"
CERT_FILE = "tls.pem"
KEY_FILE = "tls.key"
SIGNING_KEY_FILE = "signing.key"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(kind: str, name: str) -> str:
    """Job and site names become path components and certificate names: keep them boring.

    Raises:
        InvalidArgument: Empty, too long, or with characters other than letters, digits, ``_.-``.
    """
    if not _SAFE_NAME.match(name):
        raise InvalidArgument(
            f"{kind} name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Peer:
    """An authenticated caller: the site its certificate names."""

    name: str
    role: str
    fingerprint: str  # SHA-256 of the certificate (DER), hex


def certificate_identity(pem: bytes) -> Peer:
    """Name, role and fingerprint of a site certificate (already verified by TLS).

    Raises:
        PermissionDenied: The certificate names no site or no known role.
    """
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    roles = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(names) != 1 or len(roles) != 1 or roles[0].value not in ROLES:
        raise PermissionDenied("the client certificate names no hefl site and role")
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Peer(name=str(names[0].value), role=str(roles[0].value), fingerprint=fingerprint)


def peer_of(context: Any) -> Peer | None:
    """The caller of a gRPC call, from its verified client certificate; None on a plaintext
    (``--insecure``) server."""
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if not pem:
        return None
    return certificate_identity(pem[0])


@dataclass(frozen=True)
class TlsFiles:
    """What a site needs to speak mutual TLS: the project's CA, its certificate and key."""

    ca: bytes
    certificate: bytes
    private_key: bytes

    @classmethod
    def load(cls, kit: Path) -> TlsFiles:
        """Read a startup kit's TLS files.

        Raises:
            InvalidArgument: A file is missing, or the private key is readable by others.
        """
        files = {}
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            path = kit / name
            if not path.is_file():
                raise InvalidArgument(f"startup kit {kit} lacks {name} (see `hefl provision`)")
            files[name] = path.read_bytes()
        check_private_file(kit / KEY_FILE)
        return cls(ca=files[CA_FILE], certificate=files[CERT_FILE], private_key=files[KEY_FILE])

    @property
    def identity(self) -> Peer:
        return certificate_identity(self.certificate)


def check_private_file(path: Path) -> None:
    """Refuse a private key that other users could read (as ssh does).

    Raises:
        InvalidArgument: Group or others have any permission on ``path``.
    """
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InvalidArgument(f"{path} is readable by others (mode {mode:o}); chmod 600 it")


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(data)


# ----- signatures ------------------------------------------------------------------------


def digest(domain: str, parts: Sequence[bytes]) -> bytes:
    """SHA-256 over a domain label and length-prefixed parts: unambiguous, and a signature
    made for one domain never verifies for another."""
    hasher = hashlib.sha256()
    for part in (b"hefl/" + domain.encode(), *parts):
        hasher.update(struct.pack(">Q", len(part)))
        hasher.update(part)
    return hasher.digest()


def verify_signature(
    public_key: bytes, signature: bytes, domain: str, parts: Sequence[bytes]
) -> None:
    """Check an Ed25519 signature made by :func:`parties.identity.SigningKey.sign`.

    Raises:
        PermissionDenied: The signature does not verify under ``public_key``.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest(domain, parts))
    except (InvalidSignature, ValueError) as err:
        raise PermissionDenied(f"the {domain} signature does not verify") from err


def same_bytes(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of hashes, fingerprints and keys."""
    return hmac.compare_digest(a, b)


# ----- gRPC credentials --------------------------------------------------------------------


def server_credentials(tls: TlsFiles) -> Any:
    """Mutual TLS for the coordinator: it presents its certificate and requires a client
    certificate signed by the project's CA on every connection."""
    import grpc

    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)],
        root_certificates=tls.ca,
        require_client_auth=True,
    )


def channel_credentials(tls: TlsFiles) -> Any:
    """Mutual TLS for a party: it trusts only the project's CA and presents its certificate."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.private_key, certificate_chain=tls.certificate
    )
