"""Sealed model delivery: only the addressed party opens the box, and only as it was sealed."""

from __future__ import annotations

import dataclasses

import pytest

from hefl.errors import ProtocolError
from parties.sealing import SealedBox, SealingKey, seal

MODEL = b'{"weights": [0.25, -1.5, 3.0]}'
ASSOCIATED = b"job-1/hospital-2"


def _flip_first_bit(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


@pytest.fixture
def recipient() -> SealingKey:
    return SealingKey()


@pytest.fixture
def box(recipient: SealingKey) -> SealedBox:
    return seal(recipient.public_bytes, MODEL, associated=ASSOCIATED)


def test_the_recipient_opens_what_was_sealed(recipient: SealingKey, box: SealedBox) -> None:
    assert box.ciphertext != MODEL and MODEL not in box.ciphertext
    assert recipient.open(box, associated=ASSOCIATED) == MODEL


def test_each_seal_uses_a_fresh_ephemeral_key_and_nonce(recipient: SealingKey) -> None:
    first = seal(recipient.public_bytes, MODEL, associated=ASSOCIATED)
    second = seal(recipient.public_bytes, MODEL, associated=ASSOCIATED)
    assert first.ephemeral_public_key != second.ephemeral_public_key
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_another_partys_key_does_not_open_the_box(box: SealedBox) -> None:
    with pytest.raises(ProtocolError, match="does not open with this party's key"):
        SealingKey().open(box, associated=ASSOCIATED)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "ephemeral_public_key"])
def test_a_tampered_box_does_not_open(recipient: SealingKey, box: SealedBox, field: str) -> None:
    tampered = dataclasses.replace(box, **{field: _flip_first_bit(getattr(box, field))})
    with pytest.raises(ProtocolError):
        recipient.open(tampered, associated=ASSOCIATED)


@pytest.mark.parametrize("associated", [b"job-1/hospital-3", b"job-2/hospital-2", b""])
def test_a_box_for_another_job_or_party_does_not_open(
    recipient: SealingKey, box: SealedBox, associated: bytes
) -> None:
    with pytest.raises(ProtocolError):
        recipient.open(box, associated=associated)
