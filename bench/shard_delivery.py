"""How long a job's Ray workers take to get their shards, and the memory it takes.

Run on a job directory whose uploads are complete (e.g. one left by ``hefl bench --synthetic``
under ``--workdir``), against a fresh local Ray::

    python -m bench.shard_delivery WORKDIR/jobs/JOB --workers 2

It starts the job's :class:`coordinator.ray_pool.WorkerPool` as the coordinator does, times
``load()`` (the workers' start-up before the first iteration), then reports the peak resident
memory of this process (the coordinator's side), of each worker and of the Ray node's object
store (the raylet's, which maps it), as Linux counts them (``VmHWM``). It only uses the
pool's public interface, so the same command measures any version that has it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path, help="a job directory whose uploads are complete")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import psutil
    import ray

    from coordinator import ray_pool
    from coordinator.store import JobStore
    from hefl.codec import PackingLayout

    store = JobStore(args.job)
    record = store.read_record()
    assert record.layout_slots is not None, "the job has no layout yet"
    layout = PackingLayout.assign(
        slots=record.layout_slots, party_rows=[(p.name, p.rows) for p in record.parties]
    )
    ray_pool.connect(None, num_cpus=args.workers)
    pool = ray_pool.WorkerPool(
        context_bytes=store.context_path().read_bytes(),
        parameter_set=record.parameter_set,
        job_root=str(args.job),
        layout=layout,
        columns=len(record.features) + 1,
        workers=args.workers,
    )
    started = time.perf_counter()
    pool.load()
    load_s = time.perf_counter() - started
    raylets = [
        p
        for p in psutil.process_iter(["pid", "name"])
        if p.info["name"] == "raylet" and p.pid in {c.pid for c in _ray_processes()}
    ]
    report = {
        "blocks": layout.n_blocks,
        "workers": pool.size,
        "load_s": round(load_s, 1),
        "peak_mb": {
            "coordinator": round(_peak_mb(os.getpid())),
            "workers": [round(m) for m in pool.peak_rss_mb()],
            "raylet_object_store": [round(_peak_mb(p.pid)) for p in raylets],
        },
    }
    pool.shutdown()
    ray.shutdown()
    print(json.dumps(report))


def _ray_processes() -> list[Any]:
    """This driver's Ray node's processes (``ray.init`` started them as its children)."""
    import psutil

    return list(psutil.Process().children(recursive=True))


if __name__ == "__main__":
    main()
