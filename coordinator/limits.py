"""What one coordinator accepts: the :class:`Limits` config, the byte caps the parameter sets
imply, and the gate that bounds open streams.

A server that takes requests from several organisations bounds every resource a request can
make it hold: rows, features and parties (which fix how many ciphertexts a job plans and holds),
bytes per request and per job, open jobs per site, threads held by streams, and time (a job
whose parties never come, or whose uploads never finish, fails and releases its workers).
Every refusal is a domain error with a message naming the limit and the option that sets it:
:class:`hefl.errors.ResourceExhausted` for a limit, :class:`hefl.errors.DeadlineExceeded` for
a deadline. ``hefl coordinator`` loads :class:`Limits` from its flags, the environment
(``HEFL_COORDINATOR_MAX_FEATURES``...) or a TOML file (``--limits FILE``); the README lists
them with their defaults.
"""

from __future__ import annotations

import re
import threading
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from hefl.codec import piece_sizes, stats_length
from hefl.errors import InvalidArgument, ResourceExhausted
from hefl.params import CkksParameters

Kind = Literal["count", "bytes", "seconds"]

KiB, MiB, GiB = 1024, 1024**2, 1024**3


def _limit(default: float, kind: Kind, doc: str) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc})


@dataclass(frozen=True)
class Limits:
    """The coordinator's limits (see the README's table). Zero turns off only the limits whose
    description says so."""

    max_features: int = _limit(512, "count", "feature columns per job")
    max_parties: int = _limit(32, "count", "parties per job (the roster's size)")
    max_iterations: int = _limit(1000, "count", "training iterations a job may ask for")
    max_rows_per_party: int = _limit(10_000_000, "count", "rows one party may declare")
    max_rows_per_job: int = _limit(10_000_000, "count", "rows of all parties of a job together")
    max_job_bytes: int = _limit(
        64 * GiB, "bytes", "bytes a job stores: its context and every party's uploads"
    )
    max_open_jobs_per_site: int = _limit(
        4, "count", "jobs in progress one site may have created (as their key holder)"
    )
    max_open_jobs: int = _limit(64, "count", "jobs in progress on the coordinator")
    join_timeout_s: float = _limit(
        6 * 3600,
        "seconds",
        "from a job's creation until every party has joined and sent statistics",
    )
    upload_timeout_s: float = _limit(
        2 * 3600, "seconds", "from uploads opening until every upload is complete (workers wait)"
    )
    idle_timeout_s: float = _limit(
        3600,
        "seconds",
        "a waiting job in which nothing happens for this long fails (parties or key holder away)",
    )
    server_threads: int = _limit(128, "count", "gRPC server threads")
    max_streams: int = _limit(
        96, "count", "streaming calls open at once; the other threads stay free for unary calls"
    )
    max_streams_per_site: int = _limit(16, "count", "streaming calls one site may hold open")
    max_streams_per_job: int = _limit(72, "count", "streaming calls open on one job")
    keepalive_s: float = _limit(
        60, "seconds", "ping every connection this often, so dead peers' streams end"
    )
    keepalive_timeout_s: float = _limit(20, "seconds", "a peer that does not answer a ping is gone")
    max_connection_age_s: float = _limit(
        0, "seconds", "close connections this old (after a grace of 10 min); 0: never"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"limit {f.name} must be a number, not {value!r}")
            if value < 0 or (value == 0 and f.name != "max_connection_age_s"):
                raise InvalidArgument(f"limit {f.name} must be positive, not {value}")
        if self.max_streams >= self.server_threads:
            raise InvalidArgument(
                f"max_streams ({self.max_streams}) must stay below server_threads "
                f"({self.server_threads}): the difference serves unary calls"
            )
        if self.max_rows_per_party > self.max_rows_per_job:
            raise InvalidArgument("max_rows_per_party exceeds max_rows_per_job")

    @classmethod
    def load(
        cls, *, file: Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Limits:
        """The defaults, then the TOML ``file``'s values, then ``overrides`` (flags, environment).

        Values are numbers, or strings with a unit: ``"64GiB"``, ``"512MiB"``, ``"6h"``,
        ``"30min"``, ``"90s"``.

        Raises:
            InvalidArgument: An unknown limit, an unreadable file or an unusable value; the
                message names it.
        """
        values: dict[str, Any] = {}
        if file is not None:
            try:
                values.update(tomllib.loads(file.read_text()))
            except (OSError, tomllib.TOMLDecodeError) as err:
                raise InvalidArgument(f"limits file {file}: {err}") from err
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidArgument(f"unknown limits {unknown}; known: {sorted(known)}")
        parsed: dict[str, Any] = {
            name: parse_quantity(value, known[name].metadata["kind"], name=name)
            for name, value in values.items()
        }
        return replace(cls(), **parsed)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value with its unit, what it bounds) for every limit, in declaration order."""
        return [
            (
                f.name,
                format_quantity(value, f.metadata["kind"]) if value else "0 (off)",
                f.metadata["doc"],
            )
            for f in fields(self)
            for value in [getattr(self, f.name)]
        ]


_UNITS: dict[Kind, dict[str, float]] = {
    "bytes": {"": 1, "b": 1, "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024 * GiB},
    "seconds": {"": 1, "s": 1, "min": 60, "h": 3600, "d": 86400},
    "count": {"": 1},
}


def parse_quantity(value: Any, kind: Kind, *, name: str) -> int | float:
    """A limit's value from a number or a string with a unit (see :meth:`Limits.load`).

    Raises:
        InvalidArgument: Not a number, or a unit other than ``kind``'s.
    """
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9_.]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS[kind]:
            units = ", ".join(u for u in _UNITS[kind] if u) or "none"
            raise InvalidArgument(f"limit {name}: {value!r} is not a number (units: {units})")
        try:
            number = float(match.group(1)) * _UNITS[kind][unit]
        except ValueError:
            raise InvalidArgument(f"limit {name}: {value!r} is not a number") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    else:
        raise InvalidArgument(f"limit {name}: {value!r} is not a number")
    if kind == "seconds":
        return float(number)
    if number != int(number):
        raise InvalidArgument(f"limit {name}: {value!r} is not a whole number")
    return int(number)


def approximate_bytes(size: float) -> str:
    """``size`` for a reader: 2.9 GiB, 6.1 MiB."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} bytes"


def format_quantity(value: float, kind: Kind) -> str:
    if kind == "bytes":
        for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
            if value >= size and value % size == 0:
                return f"{int(value // size)} {unit}"
        return f"{int(value):,} bytes"
    if kind == "seconds":
        for unit, size in (("h", 3600), ("min", 60)):
            if value >= size and value % size == 0:
                return f"{int(value // size)} {unit}"
        return f"{value:g} s"
    return f"{int(value):,}"


# ----- byte caps the parameter sets imply -------------------------------------------------------


def context_bytes_cap(params: CkksParameters) -> int:
    """The most bytes a job's public context may take: its public key and relinearization keys
    uncompressed, plus room for TenSEAL's framing.

    A public key is 2 polynomials over the whole chain (k primes, special prime included); the
    relinearization key holds one such pair per data prime (k - 1). Serialized they compress to
    about two thirds of that (measured: 3.22 MB of 4.72 MB on n8192-depth4, 7.90 of 9.44 MB on
    n16384-depth4). Galois keys (68 and 179 MB) are not needed and do not fit: the refresh sums
    slots at the key holder, so no rotation ever runs.
    """
    k = len(params.coeff_mod_bit_sizes)
    polys = 2 * (1 + (k - 1))
    return polys * params.poly_modulus_degree * k * 8 + 64 * KiB


def ciphertext_bytes_cap(params: CkksParameters) -> int:
    """The most bytes one fresh ciphertext can take serialized: 2 polynomials over the data
    primes, uncompressed (655 KB on n8192-depth4; they serialize to 426 KB), plus framing."""
    k = len(params.coeff_mod_bit_sizes)
    return 2 * params.poly_modulus_degree * (k - 1) * 8 + 4 * KiB


def task_answer_bytes_cap(
    params: CkksParameters, *, columns: int, parties: int, iterations: int
) -> int:
    """The most bytes one key-holder answer (one ``CompleteTask``) may take.

    The largest answers are a refresh (one fresh ciphertext per column) and the sealed models
    (per party: the weights, mean and std, and with revealed iterates one weight vector per
    iteration, as JSON); a statistics summary is a few values per feature.
    """
    refresh = columns * ciphertext_bytes_cap(params)
    models = parties * ((iterations + 3) * columns * 32 + 4 * KiB)
    return (
        refresh
        + models
        + collective_answer_bytes(params, columns=columns, parties=parties)
        + 4 * MiB
    )


def collective_answer_bytes(params: CkksParameters, *, columns: int, parties: int) -> int:
    """The most bytes of a collective answer beyond a refresh's, from the parameters: the
    shares revealed at ``keys-reveal`` (an RKG round-1 share, (k - 1) gadget rows of 2
    polynomials over the k key primes, and a public-key share over the k primes; a round-2
    share is the size of round 1) and the statistics' decryption shares, sealed to every other
    party (one polynomial over the k - 1 data primes per statistics ciphertext). It does not
    shrink with the columns, which is why a refresh's bound alone falls short of it."""
    k, n = len(params.coeff_mod_bit_sizes), params.poly_modulus_degree
    keys = (2 * (k - 1) * k + k) * n * 8
    features = max(columns - 1, 0)
    pieces = len(piece_sizes(stats_length(features), params.slots))
    stats = max(parties - 1, 1) * pieces * (k - 1) * n * 8
    return max(keys, stats) + 64 * KiB


# ----- streams -------------------------------------------------------------------------------------


class StreamGate:
    """Counts the streaming calls being served, in total, per site and per job, and refuses one
    more beyond :class:`Limits`' bounds.

    A streaming call holds one server thread for as long as it is open, idle or not (a party
    watching its job for the whole training, a client that opened an upload and sends nothing).
    Bounding them below ``server_threads`` keeps threads for every unary call, and bounding them
    per site and per job keeps one site or one job from taking the whole budget.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._open = 0
        self._sites: Counter[str] = Counter()
        self._jobs: Counter[str] = Counter()

    def open(self, rpc: str, *, site: str | None = None, job: str | None = None) -> Stream:
        """Count one more ``rpc`` stream; its site or job may be named later (:meth:`Stream.bind`).

        Raises:
            ResourceExhausted: A bound would be exceeded; nothing is counted.
        """
        stream = Stream(self, rpc)
        with self._lock:
            if self._open >= self._limits.max_streams:
                raise ResourceExhausted(
                    f"{rpc}: the coordinator already serves {self._open} streams "
                    f"(max_streams); retry later"
                )
            self._open += 1
        try:
            stream.bind(site=site, job=job)
        except ResourceExhausted:
            stream.close()
            raise
        return stream

    def _bind(self, stream: Stream, site: str | None, job: str | None) -> None:
        limits = self._limits
        with self._lock:
            if site is not None and stream.site is None:
                if self._sites[site] >= limits.max_streams_per_site:
                    raise ResourceExhausted(
                        f"{stream.rpc}: {site!r} already holds {self._sites[site]} open "
                        f"streams (max_streams_per_site); close the ones it no longer reads"
                    )
                self._sites[site] += 1
                stream.site = site
            if job is not None and stream.job is None:
                if self._jobs[job] >= limits.max_streams_per_job:
                    raise ResourceExhausted(
                        f"{stream.rpc}: job {job} already has {self._jobs[job]} open streams "
                        f"(max_streams_per_job); close the ones no longer read"
                    )
                self._jobs[job] += 1
                stream.job = job

    def _close(self, stream: Stream) -> None:
        with self._lock:
            self._open -= 1
            if stream.site is not None:
                self._sites[stream.site] -= 1
                if not self._sites[stream.site]:
                    del self._sites[stream.site]
            if stream.job is not None:
                self._jobs[stream.job] -= 1
                if not self._jobs[stream.job]:
                    del self._jobs[stream.job]

    def counts(self) -> tuple[int, dict[str, int], dict[str, int]]:
        """(open streams, per site, per job): for logs and tests."""
        with self._lock:
            return self._open, dict(self._sites), dict(self._jobs)


class Stream:
    """One counted streaming call; a context manager that uncounts it on exit."""

    def __init__(self, gate: StreamGate, rpc: str) -> None:
        self._gate = gate
        self.rpc = rpc
        self.site: str | None = None
        self.job: str | None = None
        self._closed = False

    def bind(self, *, site: str | None = None, job: str | None = None) -> None:
        """Count this stream against ``site`` and ``job`` too, once each is known.

        Raises:
            ResourceExhausted: The site or the job holds its maximum of streams.
        """
        self._gate._bind(self, site, job)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._gate._close(self)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
