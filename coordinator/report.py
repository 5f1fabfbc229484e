"""What a finished job measured, kept by the coordinator and served by ``GetReport``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from hefl import messages
from hefl.algorithm import Hyperparameters
from hefl.v1 import hefl_pb2 as pb


@dataclass(frozen=True)
class JobReport:
    """Timings, traffic and memory of one training run, and the hyperparameters it chose.
    Nothing in it is derived from the data beyond what every party already learns."""

    job_id: str
    workers: int
    blocks: int
    iterations: int
    load_s: float
    train_s: float
    gradient_s: float
    refresh_s: float
    iteration_s: tuple[float, ...]
    upload_bytes: int
    key_holder_bytes_per_iteration: int
    worker_bytes_per_iteration: int
    worker_peak_rss_mb: tuple[float, ...]
    hyperparameters: Hyperparameters
    reveal_intermediate: bool
    curvature: float
    # Collective mode: "collective", the key generation's time and bytes per party (in
    # key_holder_bytes_per_iteration: every party's refresh traffic together).
    trust: str = "key-holder"
    keygen_s: float = 0.0
    keygen_bytes_per_party: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> JobReport:
        fields = json.loads(text)
        return cls(
            **{
                **fields,
                "iteration_s": tuple(fields["iteration_s"]),
                "worker_peak_rss_mb": tuple(fields["worker_peak_rss_mb"]),
                "hyperparameters": Hyperparameters(**fields["hyperparameters"]),
            }
        )

    def to_message(self) -> pb.JobReport:
        return pb.JobReport(
            job_id=self.job_id,
            workers=self.workers,
            blocks=self.blocks,
            iterations=self.iterations,
            load_s=self.load_s,
            train_s=self.train_s,
            gradient_s=self.gradient_s,
            refresh_s=self.refresh_s,
            iteration_s=self.iteration_s,
            upload_bytes=self.upload_bytes,
            key_holder_bytes_per_iteration=self.key_holder_bytes_per_iteration,
            worker_bytes_per_iteration=self.worker_bytes_per_iteration,
            worker_peak_rss_mb=self.worker_peak_rss_mb,
            options=messages.training_options(
                self.hyperparameters, reveal_intermediate=self.reveal_intermediate
            ),
            curvature=self.curvature,
            trust=self.trust,
            keygen_s=self.keygen_s,
            keygen_bytes_per_party=self.keygen_bytes_per_party,
        )
