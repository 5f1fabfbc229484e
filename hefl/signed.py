"""What parties sign, each statement in its own domain (:func:`hefl.identity.digest`).

Signatures are made in :mod:`parties` with a party's long-term key and checked wherever the
statement is used: the coordinator checks what it can early, to refuse before it stores; the key
holder and the parties check again, because they do not trust the coordinator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SEAL_KEY = "seal-key"
STATS = "stats"
MODEL = "model"
COLLECTIVE_BOX = "collective-box"
LABEL_TERM = "label-term"


def seal_key_parts(job_id: str, party: str, seal_public_key: bytes) -> list[bytes]:
    """A party vouches that models of ``job_id`` for it must be sealed to this key."""
    return [job_id.encode(), party.encode(), seal_public_key]


def stats_parts(job_id: str, party: str, rows: int, ciphertexts: Sequence[bytes]) -> list[bytes]:
    """A party vouches for its encrypted statistics (and its row count) in ``job_id``."""
    digests = [hashlib.sha256(c).digest() for c in ciphertexts]
    return stats_digest_parts(job_id, party, rows, digests)


def stats_digest_parts(job_id: str, party: str, rows: int, digests: Sequence[bytes]) -> list[bytes]:
    """:func:`stats_parts` from the ciphertexts' SHA-256 digests (for a share that streams in)."""
    return [job_id.encode(), party.encode(), str(rows).encode(), *digests]


def model_parts(
    job_id: str, party: str, ephemeral_public_key: bytes, nonce: bytes, ciphertext: bytes
) -> list[bytes]:
    """The key holder vouches that it sealed this model for ``party`` of ``job_id``."""
    return [job_id.encode(), party.encode(), ephemeral_public_key, nonce, ciphertext]


def collective_box_parts(
    job_id: str,
    step: str,
    sender: str,
    recipient: str,
    ephemeral_public_key: bytes,
    nonce: bytes,
    ciphertext: bytes,
) -> list[bytes]:
    """A roster party vouches that it sealed this box of protocol step ``step`` for
    ``recipient`` (collective mode: decryption shares of the statistics, mask shares of the
    model), so that the coordinator relaying it can neither forge nor redirect it."""
    return [job_id.encode(), step.encode(), sender.encode(), recipient.encode()] + [
        ephemeral_public_key,
        nonce,
        ciphertext,
    ]


def label_term_parts(job_id: str, party: str, label_term: bytes) -> list[bytes]:
    """A party vouches for its encrypted label term in ``job_id`` (collective mode)."""
    return label_term_digest_parts(job_id, party, hashlib.sha256(label_term).digest())


def label_term_digest_parts(job_id: str, party: str, digest: bytes) -> list[bytes]:
    """:func:`label_term_parts` from the term's SHA-256 digest (its commitment)."""
    return [job_id.encode(), party.encode(), digest]


COLLECTIVE_SETUP = "collective-setup"


def collective_parts(job_id: str, step: str, party: str, data: bytes) -> list[bytes]:
    """A roster party vouches that it sent ``data`` at protocol step ``step`` of ``job_id``
    (collective mode: the seed commitment and reveal, its commitments to and its shares of the
    keys, the statistics and the label term, its view of the context and of the model). Each
    party signs one message per step, so the coordinator can neither forge a party's message
    nor show two parties different ones."""
    return [job_id.encode(), step.encode(), party.encode(), hashlib.sha256(data).digest()]
