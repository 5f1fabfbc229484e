"""Sealed delivery of the trained model: only the addressed party can open it.

The key holder encrypts the final model once per party to that party's X25519 public key
(ephemeral-static ECDH, HKDF-SHA256, AES-256-GCM bound to job and party names). The coordinator
relays the sealed boxes and learns nothing about the model. Security assumes an
honest-but-curious coordinator that relays the parties' public keys faithfully.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hefl.errors import ProtocolError


@dataclass(frozen=True)
class SealedBox:
    ephemeral_public_key: bytes
    nonce: bytes
    ciphertext: bytes


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _derive(shared: bytes, associated: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"hefl model " + associated
    ).derive(shared)


class SealingKey:
    """A party's per-job key pair for receiving the model."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()

    @property
    def public_bytes(self) -> bytes:
        return _raw(self._private.public_key())

    def open(self, box: SealedBox, *, associated: bytes) -> bytes:
        """Decrypt a box sealed to this key.

        Raises:
            ProtocolError: The box was not sealed to this key or was tampered with.
        """
        try:
            shared = self._private.exchange(
                X25519PublicKey.from_public_bytes(box.ephemeral_public_key)
            )
            return AESGCM(_derive(shared, associated)).decrypt(
                box.nonce, box.ciphertext, associated
            )
        except Exception as err:
            raise ProtocolError("the sealed model does not open with this party's key") from err


def seal(recipient_public_key: bytes, plaintext: bytes, *, associated: bytes) -> SealedBox:
    """Encrypt ``plaintext`` so that only the holder of ``recipient_public_key`` can read it."""
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public_key))
    nonce = os.urandom(12)
    ciphertext = AESGCM(_derive(shared, associated)).encrypt(nonce, plaintext, associated)
    return SealedBox(_raw(ephemeral.public_key()), nonce, ciphertext)
