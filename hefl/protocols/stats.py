"""Encrypted statistics: the job's (count, mean, std, curvature) with only a sum decrypted.

Protocol (one round, before training; the shape of Lattigo's ``multiparty`` protocols):

1. Share (each party, public context; :meth:`StatsProtocol.gen_share`): the party encrypts
   :func:`hefl.codec.stats_vector` of its rows, i.e. its row count, per-feature sums and sums of
   pairwise products, in ciphertexts of at most ``slots`` values, and sends that
   :class:`StatsShare` with its row count in the clear (the row count fixes where its rows sit
   in the packing layout; its number of upload ciphertexts would reveal it anyway).
   The party signs its share (:func:`hefl.signed.stats_parts`) with its long-term key.
2. Relay (coordinator, public context): a share streams in piece by piece
   (:meth:`StatsShare.to_chunks`, :func:`pieces_of`), each checked as it arrives
   (:meth:`StatsProtocol.check_piece`, which keeps the re-serialized ciphertext); every party's
   checked share goes to the key holder in one :class:`StatsRequest`.
3. Aggregate and finalize (key holder, secret key): it checks each share and its signature
   against the job's roster (:mod:`parties.keyholder`), adds them piece by piece itself
   (:meth:`StatsProtocol.aggregate`), so no single party's share and no other ciphertext can be
   passed off as the sum, and summarizes the decrypted sum into
   :class:`hefl.codec.AggregateStats` (:meth:`StatsProtocol.summarize`); only that summary leaves
   the key holder (:func:`summary_to_proto`). The coordinator checks that its count is the sum
   of the declared row counts (:meth:`StatsProtocol.accept_summary`).

Who sees what. The coordinator sees ciphertexts, the declared row counts and the summary. The
summary (global count, mean and standard deviation of every feature, largest eigenvalue of the
features' correlation matrix) goes to every party. The key holder alone sees the decrypted
aggregate, hence the global correlation matrix, while summarizing it. Nobody sees any party's
own statistics: the key holder decrypts only the sum of every roster party's signed share.

Security and precision: the shares are CKKS ciphertexts under one of :mod:`hefl.params`'s
128-bit parameter sets (IND-CPA under RLWE). Each fresh ciphertext decrypts with an absolute
error of about 2^-20 per slot at a 2^30 scale, so the aggregate is off by that times the number
of parties: negligible against sums of hundreds of rows; the count is rounded to an integer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hefl import sealio
from hefl.codec import AggregateStats, Array, piece_sizes, split_vector, stats_length, stats_vector
from hefl.errors import InvalidArgument, ProtocolError
from hefl.protocols.keys import Decryptor
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules, Expected

if TYPE_CHECKING:
    import tenseal as ts


@dataclass(frozen=True)
class StatsShare:
    """One party's encrypted statistics and its declared row count.

    Attributes:
        pieces: Serialized CKKS vectors, the party's :func:`hefl.codec.stats_vector` cut into
            :func:`hefl.codec.piece_sizes`.
        rows: The party's row count, in the clear.
    """

    pieces: tuple[bytes, ...]
    rows: int
    # The party's signature over (job, party, rows, the pieces' hashes): hefl.signed.stats_parts.
    signature: bytes = b""

    def to_proto(self, *, job_id: str, party: str) -> pb.SubmitStatsRequest:
        return pb.SubmitStatsRequest(
            job_id=job_id,
            party=party,
            ciphertexts=list(self.pieces),
            rows=self.rows,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, request: pb.SubmitStatsRequest) -> StatsShare:
        return cls(
            pieces=tuple(request.ciphertexts), rows=request.rows, signature=request.signature
        )

    def to_chunks(self, *, job_id: str, party: str) -> Iterator[pb.StatsChunk]:
        """The share as ``SubmitStats`` streams it: the header, then one piece per message."""
        yield pb.StatsChunk(
            header=pb.StatsHeader(
                job_id=job_id, party=party, rows=self.rows, signature=self.signature
            )
        )
        for piece in self.pieces:
            yield pb.StatsChunk(piece=piece)


def pieces_of(chunks: Iterable[pb.StatsChunk]) -> Iterator[bytes]:
    """The pieces that follow a ``SubmitStats`` header, as they arrive.

    Raises:
        InvalidArgument: A second header.
    """
    for chunk in chunks:
        if chunk.WhichOneof("part") != "piece":
            raise InvalidArgument("SubmitStats: only pieces may follow the header")
        yield chunk.piece


@dataclass(frozen=True)
class StatsRequest:
    """Every party's share, for the key holder to check, add up and summarize."""

    job_id: str
    features: int
    shares: tuple[tuple[str, StatsShare], ...]  # (party, share)

    def to_proto(self) -> pb.DecryptStatsTask:
        return pb.DecryptStatsTask(
            features=self.features,
            shares=[share.to_proto(job_id=self.job_id, party=p) for p, share in self.shares],
        )

    @classmethod
    def from_proto(cls, task: pb.DecryptStatsTask) -> StatsRequest:
        return cls(
            job_id=task.shares[0].job_id if task.shares else "",
            features=task.features,
            shares=tuple((s.party, StatsShare.from_proto(s)) for s in task.shares),
        )


def summary_to_proto(summary: AggregateStats) -> pb.Values:
    """The key holder's answer: the summary, nothing else."""
    return pb.Values(values=summary.to_values())


def summary_from_proto(values: pb.Values, *, features: int) -> AggregateStats:
    """Raises: InvalidArgument: not one summary of ``features`` features."""
    return AggregateStats.from_values(list(values.values), features)


@dataclass(frozen=True)
class StatsProtocol:
    """The encrypted-statistics protocol of a job with ``features`` features.

    Attributes:
        features: Feature columns (the bias column is not part of the statistics).
        slots: Slots per ciphertext of the job's parameter set.
        scale: The scale the pieces are encrypted at; None: the context's. Collective jobs
            encrypt them at :data:`hefl.protocols.collective.keyswitch.REVEAL_SCALE_BITS`, so
            that the smudged collective decryption of their sum keeps its precision.
    """

    features: int
    slots: int
    scale: float | None = None

    @property
    def piece_sizes(self) -> list[int]:
        """How many values each ciphertext of a share holds."""
        return piece_sizes(stats_length(self.features), self.slots)

    def gen_share(self, context: ts.Context, rows: Array) -> StatsShare:
        """A party's share of its ``rows`` (shape (rows, features)), encrypted under the public
        key of ``context``."""
        import tenseal as ts

        if rows.ndim != 2 or rows.shape[1] != self.features:
            raise InvalidArgument(f"rows of shape {rows.shape}, expected {self.features} features")
        pieces = split_vector(stats_vector(rows), self.slots)
        return StatsShare(
            pieces=tuple(
                sealio.serialize(
                    ts.ckks_vector(context, piece)
                    if self.scale is None
                    else ts.ckks_vector(context, piece, self.scale)
                )
                for piece in pieces
            ),
            rows=int(rows.shape[0]),
        )

    def expected(self, index: int) -> Expected:
        """What piece ``index`` of a share must be: fresh, holding its part of the vector."""
        return Expected(values=self.piece_sizes[index], scale=self.scale)

    def check_piece(self, rules: CiphertextRules, data: bytes, *, index: int, party: str) -> bytes:
        """Check piece ``index`` of a share where it arrives; returns it re-serialized.

        A piece's bytes are what its party signed, so a piece that does not re-serialize to
        itself could not be checked by the key holder against the signature: it is refused.

        Raises:
            InvalidArgument: A piece beyond the share's, not a ciphertext of the job's
                parameters, not as many values as the piece's part of the vector, or bytes
                that change when re-serialized.
        """
        what = self._piece(index, party=party)
        canonical = rules.canonical(data, self.expected(index), what=what)
        if canonical != data:
            raise InvalidArgument(
                f"{what} is not serialized as TenSEAL serializes it: its party signed these "
                f"bytes, and the coordinator stores and relays only re-serialized ones"
            )
        return canonical

    def _piece(self, index: int, *, party: str) -> str:
        """How errors name piece ``index`` of ``party``'s share, once it is one of its pieces."""
        sizes = self.piece_sizes
        what = f"statistics of party {party!r} (piece {index})"
        if index >= len(sizes):
            raise InvalidArgument(
                f"{what}: a share of {self.features} features has {len(sizes)} pieces "
                f"(count, sums, sums of pairwise products)"
            )
        return what

    def check_pieces(self, count: int, *, party: str) -> None:
        """Raises: InvalidArgument: a share of ``count`` pieces is not whole."""
        if count != len(self.piece_sizes):
            raise InvalidArgument(
                f"statistics of party {party!r} come in {count} pieces, expected "
                f"{len(self.piece_sizes)} (count, sums, sums of pairwise products of "
                f"{self.features} features)"
            )

    @staticmethod
    def check_rows(rows: int, *, party: str) -> None:
        """Raises: InvalidArgument: ``party`` declares no rows."""
        if rows <= 0:
            raise InvalidArgument(f"party {party!r} declares {rows} rows")

    def check_share(self, context: ts.Context, share: StatsShare, *, party: str) -> None:
        """Check a whole share (the key holder does, on what the coordinator relays): a
        positive row count and every piece, one at a time.

        Raises:
            InvalidArgument: The message names the party, the piece and what is wrong.
        """
        self.check_rows(share.rows, party=party)
        self.check_pieces(len(share.pieces), party=party)
        rules = CiphertextRules(context)
        for index, piece in enumerate(share.pieces):
            rules.load(piece, self.expected(index), what=self._piece(index, party=party))

    def aggregate(self, context: ts.Context, shares: Sequence[StatsShare]) -> tuple[bytes, ...]:
        """The piecewise sum of checked shares (at least one), serialized."""
        totals = [
            sealio.add_vectors(
                context, pieces, what=f"statistics (piece {index})", expected=self.expected(index)
            )
            for index, pieces in enumerate(zip(*(share.pieces for share in shares), strict=True))
        ]
        return tuple(sealio.serialize(total) for total in totals)

    def summarize(self, pieces: Sequence[bytes], decryptor: Decryptor) -> AggregateStats:
        """The key holder's finalization: decrypt the sum it added up, keep only its summary.

        Raises:
            ProtocolError: Not as many pieces as this protocol's.
            InvalidArgument: A piece does not decrypt under the key holder's context, or the
                sums describe no rows.
        """
        if len(pieces) != len(self.piece_sizes):
            raise ProtocolError(
                f"statistics in {len(pieces)} ciphertexts, expected {len(self.piece_sizes)}"
            )
        sums = np.concatenate([decryptor.decrypt(p, what="summed statistics") for p in pieces])
        return AggregateStats.from_sums(sums, self.features)

    def accept_summary(
        self, summary: AggregateStats, shares: Sequence[StatsShare]
    ) -> AggregateStats:
        """The coordinator's check of the key holder's answer against the declared rows.

        Raises:
            InvalidArgument: The encrypted counts do not add up to the declared row counts.
        """
        declared = sum(share.rows for share in shares)
        if declared != summary.count:
            raise InvalidArgument(
                f"parties declare {declared} rows but their encrypted statistics count "
                f"{summary.count}"
            )
        return summary
