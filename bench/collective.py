"""Cost of the collective protocols: time per party and per aggregator step, and bytes per share.

``python -m bench.collective [--parameter-set n8192-depth4] [--parties 3] [--repeat 3]`` runs
every protocol of :mod:`hefl.protocols.collective` once per party, in this one process (so the
times are one core's, without any network), and prints the median time of each step and the
size of what each party sends. The training refresh is also given per iteration for
``--columns`` columns (31 for breast cancer: 30 features and the bias).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import tenseal as ts

from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.collective import (
    REVEAL_SCALE_BITS,
    CollectiveDecryptProtocol,
    CollectiveJob,
    CrsLabel,
    MaskedTransformProtocol,
    PublicKeyGenProtocol,
    PublicKeySwitchProtocol,
    RefreshProtocol,
    RelinKeyGenProtocol,
    SeedAgreementParty,
    SeedAgreementProtocol,
    Smudging,
    TargetPublicKey,
    ciphertext_of,
    fresh_noise_std,
    public_context,
    refreshed_noise_std,
    sum_noise_std,
)
from hefl.protocols.collective.seal_layout import CiphertextPolys
from hefl.protocols.collective.secret import SecretKeyShare

T = TypeVar("T")


class Timer:
    """Median wall time per named step over the runs."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.sizes: dict[str, int] = {}

    def time(self, name: str, step: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = step()
        self.samples.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def report(self) -> str:
        lines = [f"{'step':58s} {'median ms':>10s} {'sent (KB)':>10s}"]
        for name, samples in self.samples.items():
            size = self.sizes.get(name)
            shown = f"{size / 1024:10.1f}" if size is not None else f"{'':10s}"
            lines.append(f"{name:58s} {1000 * statistics.median(samples):10.1f} {shown}")
        return "\n".join(lines)


def run_once(name: str, parties: int, columns: int, timer: Timer) -> None:
    params = PARAMETER_SETS[name]
    roster = tuple(f"party-{i}" for i in range(parties))
    job_id = "bench"

    seed = SeedAgreementProtocol(job_id, roster)
    agreement = [SeedAgreementParty(seed, p) for p in roster]
    commitments = [a.commitment() for a in agreement]
    reveals = [a.reveal(commitments) for a in agreement]
    crs = timer.time(
        "seed agreement (per party: check and hash)", lambda: seed.agree(commitments, reveals)
    )
    job = CollectiveJob(params, job_id, roster, crs)
    first = roster[0]

    shares = {
        p: timer.time("key share generation (party)", lambda: SecretKeyShare.generate(params))
        for p in roster
    }

    ckg = PublicKeyGenProtocol(job)
    timer.time("CKG: common polynomial (everyone, once)", lambda: ckg.crp)
    pk_shares = {
        p: timer.time("CKG: share (party)", partial(ckg.gen_share, s)) for p, s in shares.items()
    }
    timer.sizes["CKG: share (party)"] = len(pk_shares[first].to_bytes())
    public_key = timer.time(
        "CKG: aggregate + key (coordinator)",
        lambda: ckg.public_key(ckg.aggregate_shares(pk_shares)),
    )

    rkg = RelinKeyGenProtocol(job)
    timer.time("RKG: common polynomials (everyone, once)", lambda: rkg.crps)
    round1, ephemeral = {}, {}
    for p, s in shares.items():
        round1[p], ephemeral[p] = timer.time(
            "RKG: round 1 share (party)", partial(rkg.gen_round1, s)
        )
    timer.sizes["RKG: round 1 share (party)"] = len(round1[first].to_bytes())
    aggregate1 = timer.time(
        "RKG: aggregate round 1 (coordinator)", lambda: rkg.aggregate_round1(round1)
    )
    round2 = {
        p: timer.time(
            "RKG: round 2 share (party)",
            partial(rkg.gen_round2, s, ephemeral[p], aggregate1),
        )
        for p, s in shares.items()
    }
    timer.sizes["RKG: round 2 share (party)"] = len(round2[first].to_bytes())
    relin_key = timer.time(
        "RKG: aggregate round 2 + key (coordinator)",
        lambda: rkg.relin_key(aggregate1, rkg.aggregate_round2(aggregate1, round2)),
    )
    context = timer.time(
        "public TenSEAL context from the keys", lambda: public_context(job, public_key, relin_key)
    )
    timer.sizes["public TenSEAL context from the keys"] = len(context.serialize())

    slots = params.slots
    values = [np.linspace(-1, 1, slots) * (i + 1) for i in range(parties)]
    vectors = [ts.ckks_vector(context, v, scale=2.0**REVEAL_SCALE_BITS) for v in values]
    total = vectors[0]
    for vector in vectors[1:]:
        total = total + vector
    statistics_ct = ciphertext_of(total)
    noise = sum_noise_std(fresh_noise_std(params, parties), parties)

    decryption = CollectiveDecryptProtocol(
        job, statistics_ct, purpose="statistics/0", noise_std=noise, smudging=Smudging()
    )
    d_shares = {
        p: timer.time("decryption: share, top level (party)", partial(decryption.gen_share, s))
        for p, s in shares.items()
    }
    timer.sizes["decryption: share, top level (party)"] = len(d_shares[first].to_bytes())
    timer.time(
        "decryption: aggregate + decode (receiver)",
        lambda: decryption.decrypt(decryption.aggregate_shares(d_shares)),
    )

    own = params.make_context()
    switch = PublicKeySwitchProtocol(
        job,
        statistics_ct,
        target=TargetPublicKey.of_context(job, own),
        purpose="model/0",
        noise_std=noise,
        smudging=Smudging(),
    )
    s_shares = {
        p: timer.time("public-key switch: share, top level (party)", partial(switch.gen_share, s))
        for p, s in shares.items()
    }
    timer.sizes["public-key switch: share, top level (party)"] = len(s_shares[first].to_bytes())
    timer.time(
        "public-key switch: aggregate (coordinator)",
        lambda: switch.key_switch(switch.aggregate_shares(s_shares)),
    )

    product = ciphertext_of(ts.ckks_vector(context, values[0]) * ts.ckks_vector(context, values[0]))
    stale = CiphertextPolys(last_level(job), product.scale, product.polys[:, :1].copy())
    refresh = RefreshProtocol(
        job,
        stale,
        label=CrsLabel(job_id, "refresh", key="x"),
        scale_up_bits=REVEAL_SCALE_BITS - params.scale_bits,
    )
    r_shares = {
        p: timer.time("refresh (identity): share (party)", partial(refresh.gen_share, s))
        for p, s in shares.items()
    }
    timer.sizes["refresh (identity): share (party)"] = len(r_shares[first].to_bytes())
    fresh = timer.time(
        "refresh (identity): aggregate + finalize (coordinator)",
        lambda: refresh.finalize(refresh.aggregate_shares(r_shares)),
    )
    reveal = CollectiveDecryptProtocol(
        job, fresh, purpose="x", noise_std=refreshed_noise_std(params, parties), smudging=Smudging()
    )
    timer.time(
        "decryption of a refreshed value: share (party)", lambda: reveal.gen_share(shares[first])
    )

    transform = MaskedTransformProtocol(
        job,
        stale,
        label=CrsLabel(job_id, "refresh", key="g"),
        transform=lambda v: 0.001 * v,
        transform_id="step",
        output_scale_bits=params.scale_bits,
    )
    m_shares = {
        p: timer.time("slot-sum refresh: share, 1 column (party)", partial(transform.gen_share, s))
        for p, s in shares.items()
    }
    timer.sizes["slot-sum refresh: share, 1 column (party)"] = len(m_shares[first].to_bytes())
    timer.time(
        "slot-sum refresh: aggregate + finalize, 1 column (coordinator)",
        lambda: transform.finalize(transform.aggregate_shares(m_shares)),
    )

    def iteration() -> None:
        for column in range(columns):
            protocol = MaskedTransformProtocol(
                job,
                stale,
                label=CrsLabel(job_id, "refresh", key=f"c{column}", iteration=1),
                transform=lambda v: 0.001 * v,
                transform_id="step",
                output_scale_bits=params.scale_bits,
            )
            protocol.gen_share(shares[first])

    timer.time(f"slot-sum refresh: one iteration, {columns} columns (party)", iteration)
    timer.sizes[f"slot-sum refresh: one iteration, {columns} columns (party)"] = columns * len(
        m_shares[first].to_bytes()
    )


def last_level(job: CollectiveJob) -> tuple[int, ...]:
    return job.ring.parms_id(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parameter-set", default=DEFAULT_PARAMETER_SET, choices=sorted(PARAMETER_SETS)
    )
    parser.add_argument("--parties", type=int, default=3)
    parser.add_argument("--columns", type=int, default=31)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    timer = Timer()
    for _ in range(args.repeat):
        run_once(args.parameter_set, args.parties, args.columns, timer)
    print(f"{args.parameter_set}, {args.parties} parties, {args.repeat} runs, pid {os.getpid()}")
    print(timer.report())


if __name__ == "__main__":
    main()
