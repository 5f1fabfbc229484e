"""The job's workers compute the gradient sums of the uploaded data, in this process or on Ray.

Both pools read a real job directory (the parties' encrypted columns) and must give the
plaintext gradient sums within CKKS noise, whatever the number of workers and the sharding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from coordinator.inprocess_pool import InProcessPool
from coordinator.ray_pool import WorkerPool
from coordinator.store import JobStore, atomic_write
from coordinator.training import GradientPool
from hefl import sealio
from hefl.codec import PackingLayout
from hefl.models import get_model
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.validate import CiphertextRules
from tests.test_gradient_and_refresh import kernel_tolerance

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]


@dataclass(frozen=True)
class UploadedJob:
    root: Path
    layout: PackingLayout
    data: np.ndarray  # every party's rows, in layout order, bias column included

    @property
    def columns(self) -> int:
        return self.data.shape[1]


def _uploaded_job(
    root: Path, public_context_bytes: bytes, party_rows: list[tuple[str, int]]
) -> UploadedJob:
    """A job directory as the coordinator leaves it after the uploads: the public context and
    every party's encrypted columns of its own rows."""
    context = ts.context_from(public_context_bytes)
    store = JobStore(root)
    atomic_write(store.context_path(), public_context_bytes)
    layout = PackingLayout.assign(slots=PARAMS.slots, party_rows=party_rows)
    rng = np.random.default_rng(7)
    parts = []
    for name, rows in party_rows:
        rows_data = np.hstack([rng.normal(size=(rows, 3)) * 2.0, np.ones((rows, 1))])
        for block, column, vector in layout.pack(name, rows_data):
            data = sealio.serialize(ts.ckks_vector(context, vector))
            atomic_write(store.column_path(name, block, column), data)
        parts.append(rows_data)
    return UploadedJob(root=root, layout=layout, data=np.vstack(parts))


@pytest.fixture(scope="module")
def two_blocks(
    tmp_path_factory: pytest.TempPathFactory, public_context_bytes: bytes
) -> UploadedJob:
    """Two parties in two blocks; block 0 holds rows of both."""
    root = tmp_path_factory.mktemp("two-blocks") / "job"
    return _uploaded_job(root, public_context_bytes, [("a", 3000), ("b", 2000)])


@pytest.fixture(scope="module")
def one_block(tmp_path_factory: pytest.TempPathFactory, public_context_bytes: bytes) -> UploadedJob:
    root = tmp_path_factory.mktemp("one-block") / "job"
    return _uploaded_job(root, public_context_bytes, [("a", 60), ("b", 40)])


def _assert_plaintext_gradient(
    pool: GradientPool, job: UploadedJob, private_context: ts.Context, model: str = "logistic"
) -> None:
    """Masked weights in, the plaintext gradient sums out (summed over the workers' lists), one
    per (output, column) in the model's output-major order."""
    family = get_model(model, classes=3 if model == "multiclass" else 0)
    form = family.kernel()
    rng = np.random.default_rng(3)
    weights = rng.normal(size=family.outputs * job.columns) * 0.3
    mask = rng.normal(size=weights.size) * 100.0
    k = form.weight_scale
    masked = sealio.encrypt_replicated(
        private_context, (k * (weights + mask)).tolist(), PARAMS.slots
    )

    partials = pool.gradient(masked, (k * mask).tolist(), form=form)

    sums = sealio.add_up(
        private_context,
        partials,
        what="worker gradient",
        expected=CiphertextRules(private_context).gradient(form),
    )
    got = np.array([np.sum(vector.decrypt()) for vector in sums])
    expected = family.gradient_sums(weights, job.data)
    np.testing.assert_allclose(got, expected, rtol=0, atol=kernel_tolerance(expected))


@pytest.mark.parametrize(("workers", "size"), [(1, 1), (2, 2), (3, 2)])
def test_in_process_workers_give_the_plaintext_gradient(
    two_blocks: UploadedJob, private_context: ts.Context, workers: int, size: int
) -> None:
    pool = InProcessPool(
        parameter_set=PARAMS.name,
        job_root=str(two_blocks.root),
        layout=two_blocks.layout,
        columns=two_blocks.columns,
        workers=workers,
    )
    pool.load()
    assert pool.size == size  # never more workers than blocks
    _assert_plaintext_gradient(pool, two_blocks, private_context)


@pytest.mark.slow  # starts the session's local Ray and its actors
@pytest.mark.parametrize("model", ["logistic", "multiclass"])
@pytest.mark.parametrize(
    "uploaded",
    [
        pytest.param("two_blocks", id="block-sharding"),
        pytest.param("one_block", id="column-sharding"),
    ],
)
def test_ray_workers_give_the_plaintext_gradient(
    uploaded: str,
    model: str,
    request: pytest.FixtureRequest,
    ray_session: None,
    public_context_bytes: bytes,
    private_context: ts.Context,
) -> None:
    job: UploadedJob = request.getfixturevalue(uploaded)
    pool = WorkerPool(
        context_bytes=public_context_bytes,
        parameter_set=PARAMS.name,
        job_root=str(job.root),
        layout=job.layout,
        columns=job.columns,
        workers=2,
    )
    try:
        pool.load()
        assert pool.size == 2
        # Multiclass: three margins per block from the same shards; with column sharding each
        # worker answers its columns class by class and the pool puts them in output-major order.
        _assert_plaintext_gradient(pool, job, private_context, model)
    finally:
        pool.shutdown()


@pytest.mark.slow  # starts the session's local Ray and its actors
@pytest.mark.parametrize(
    "uploaded",
    [
        pytest.param("two_blocks", id="block-sharding"),
        pytest.param("one_block", id="column-sharding"),
    ],
)
def test_a_ray_worker_restarted_after_its_process_died_gets_its_blocks_again(
    uploaded: str,
    request: pytest.FixtureRequest,
    ray_session: None,
    public_context_bytes: bytes,
    private_context: ts.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The blocks reach workers through Ray's store only; a worker whose process is killed
    comes back empty, and the pool gives it its blocks again from the job directory."""
    import ray

    job: UploadedJob = request.getfixturevalue(uploaded)
    pool = WorkerPool(
        context_bytes=public_context_bytes,
        parameter_set=PARAMS.name,
        job_root=str(job.root),
        layout=job.layout,
        columns=job.columns,
        workers=2,
    )
    try:
        pool.load()
        # Ray kills the actor's process and restarts it from its constructor's arguments.
        ray.kill(pool._actors[1], no_restart=False)
        with caplog.at_level("WARNING", logger="hefl.ray"):
            _assert_plaintext_gradient(pool, job, private_context)
        assert "1 of 2 workers restarted by Ray hold no shards" in caplog.text
    finally:
        pool.shutdown()
