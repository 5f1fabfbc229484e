"""A party's long-term identity: its startup kit's TLS files and its Ed25519 signing key.

The signing key never leaves this process. What a party signs (see :func:`hefl.identity.digest`
for the encoding): as key holder, the job's charter and every sealed model; as any party, its
sealing key and its encrypted statistics, so that the key holder adds up only what roster
parties vouched for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hefl.errors import InvalidArgument
from hefl.identity import (
    ROLE_PARTY,
    SIGNING_KEY_FILE,
    TlsFiles,
    check_private_file,
    digest,
)


class SigningKey:
    """Ed25519 signatures over :func:`hefl.identity.digest` of a domain and parts."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> SigningKey:
        """A key for one run only (``--insecure``: nobody can vouch for it)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a kit's ``signing.key``.

        Raises:
            InvalidArgument: Missing, readable by others, or not an Ed25519 key.
        """
        if not path.is_file():
            raise InvalidArgument(f"{path} is missing (see `hefl provision`)")
        check_private_file(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidArgument(f"{path} is not an Ed25519 private key")
        return cls(key)

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, domain: str, parts: Sequence[bytes]) -> bytes:
        return self._private.sign(digest(domain, parts))


@dataclass(frozen=True)
class PartyIdentity:
    """Everything a provisioned party proves itself with."""

    name: str
    tls: TlsFiles
    signing_key: SigningKey

    @classmethod
    def load(cls, kit: Path) -> PartyIdentity:
        """Read a party's startup kit.

        Raises:
            InvalidArgument: A file is missing or unsafe, or the kit is not a party's.
        """
        tls = TlsFiles.load(kit)
        peer = tls.identity
        if peer.role != ROLE_PARTY:
            raise InvalidArgument(f"startup kit {kit} is a {peer.role}'s, not a party's")
        return cls(name=peer.name, tls=tls, signing_key=SigningKey.load(kit / SIGNING_KEY_FILE))
