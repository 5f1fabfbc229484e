"""What a job accepts from its parties, checked where it enters the coordinator.

Every ciphertext goes through :mod:`hefl.validate` one at a time, against what the job's layout
says it must be; what the job keeps is the re-serialized ciphertext, never the received bytes.
Errors are :class:`~hefl.errors.InvalidArgument` naming the job, party, block and column (or
statistics piece). The job's state machine (:mod:`coordinator.jobs`) calls these and persists
what they return.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenseal as ts

from hefl.errors import InvalidArgument
from hefl.params import CkksParameters
from hefl.protocols.stats import StatsProtocol
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import CiphertextRules, Expected

LABEL_TERM = (-1, -1)


@dataclass(frozen=True)
class Accepted:
    """A checked ciphertext of an upload: (block, column), or :data:`LABEL_TERM`."""

    key: tuple[int, int]
    data: bytes


class JobInputs:
    """The checks of one job's uploads and statistics.

    Args:
        job_id: Named in every error.
        context: The job's public context.
        params: Its parameter set.
        features: Feature columns (the model has one more, the bias).
        outputs: The model's outputs; its label term has one value per (output, column).
        stats_scale: The statistics' scale; None: the context's.
        label_scale: The label terms' scale; None: the context's.
    """

    def __init__(
        self,
        *,
        job_id: str,
        context: ts.Context,
        params: CkksParameters,
        features: int,
        outputs: int = 1,
        stats_scale: float | None = None,
        label_scale: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.rules = CiphertextRules(context)
        self.columns = features + 1
        # Collective jobs encrypt statistics at the reveal scale (a smudged decryption) and
        # label terms at a smaller one (what EncToShare's masks hide).
        self.stats = StatsProtocol(features=features, slots=params.slots, scale=stats_scale)
        self._column = Expected(values=params.slots)
        self._label_term = Expected(values=outputs * self.columns, scale=label_scale)

    def upload(self, chunk: pb.UploadChunk, *, blocks: range) -> list[Accepted]:
        """Every ciphertext of ``chunk``, checked one after the other and re-serialized.

        Args:
            blocks: The blocks the party's rows occupy in the layout.

        Raises:
            InvalidArgument: A block or column outside the party's, or a ciphertext that is not
                one fresh ciphertext of the job's parameters holding a block's slots (a
                column) or one value per column (the label term).
        """
        accepted = []
        for column in chunk.columns:
            where = (
                f"job {self.job_id} party {chunk.party!r} block {column.block} "
                f"column {column.feature}"
            )
            if column.block not in blocks:
                raise InvalidArgument(
                    f"{where}: block outside the party's blocks {blocks.start}..{blocks.stop - 1}"
                )
            if column.feature >= self.columns:
                raise InvalidArgument(f"{where}: the job has {self.columns} columns")
            data = self.rules.canonical(column.ciphertext, self._column, what=where)
            accepted.append(Accepted(key=(column.block, column.feature), data=data))
        if chunk.label_term:
            where = f"job {self.job_id} label term of party {chunk.party!r}"
            data = self.rules.canonical(chunk.label_term, self._label_term, what=where)
            accepted.append(Accepted(key=LABEL_TERM, data=data))
        return accepted

    def stats_piece(self, data: bytes, *, index: int, party: str) -> bytes:
        """Piece ``index`` of ``party``'s statistics, checked (:meth:`StatsProtocol.check_piece`).

        Raises:
            InvalidArgument: As :meth:`hefl.protocols.stats.StatsProtocol.check_piece`.
        """
        try:
            return self.stats.check_piece(self.rules, data, index=index, party=party)
        except InvalidArgument as err:
            raise InvalidArgument(f"job {self.job_id}: {err}") from err
