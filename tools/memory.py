"""Peak resident memory of the simulation's processes, per role, sampled from outside."""

from __future__ import annotations

import threading
from typing import Any

from tools.report import PeakMemory


class MemorySampler:
    """Peak resident memory per role, sampled every 0.2 s with psutil.

    ``coordinator`` is the coordinator process alone, ``worker`` the largest Ray worker holding
    shards (a local Ray's processes descend from the coordinator), ``party`` the largest party
    with any children, ``total`` everything at once. (``ru_maxrss`` would not do: Linux
    keeps it across ``exec``, so a child would report its parent's peak.)

    Reading a process's memory is cheap; finding descendants means reading every process of the
    system, so the trees are rediscovered in one pass every second. (A psutil tree walk per root
    at every sample took 10 ms of CPU, 5 % of a core, away from the workers it measures.)
    """

    INTERVAL_S = 0.2
    RESCAN_EVERY = 5

    def __init__(self) -> None:
        self._roots: list[tuple[str, int]] = []
        # role, root pid -> the tree's processes, with whether each is a shard worker
        self._trees: dict[tuple[str, int], list[tuple[Any, bool]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._peak_mb = {"coordinator": 0.0, "worker": 0.0, "party": 0.0, "total": 0.0}

    def add(self, role: str, pid: int) -> None:
        self._roots.append((role, pid))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peaks(self) -> PeakMemory:
        return PeakMemory(**self._peak_mb)

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(self.INTERVAL_S):
            if samples % self.RESCAN_EVERY == 0:
                self._rescan()
            self._sample()
            samples += 1

    def _rescan(self) -> None:
        import psutil

        children: dict[int, list[psutil.Process]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"], []).append(process)
        for role, pid in list(self._roots):
            try:
                tree = [psutil.Process(pid)]
            except psutil.Error:
                continue
            for process in tree:  # grows while we walk it: breadth-first
                tree.extend(children.get(process.pid, []))
            members = []
            for process in tree:
                try:
                    worker = process.pid != pid and "ShardWorker" in " ".join(process.cmdline())
                except psutil.Error:
                    continue
                members.append((process, worker))
            self._trees[(role, pid)] = members

    def _sample(self) -> None:
        import psutil

        total = 0.0
        for (role, root), members in self._trees.items():
            sizes = {}
            for process, worker in members:
                try:
                    sizes[process.pid] = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if worker:
                    self._peak("worker", sizes[process.pid])
            total += sum(sizes.values())
            if role == "coordinator":
                self._peak("coordinator", sizes.get(root, 0.0))
            else:
                self._peak("party", sum(sizes.values()))
        self._peak("total", total)

    def _peak(self, role: str, value_mb: float) -> None:
        self._peak_mb[role] = max(self._peak_mb[role], value_mb)
