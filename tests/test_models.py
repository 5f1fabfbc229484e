"""The model family: each member's polynomial in the kernel's form, its labels, and the
replica-equals-encrypted pattern every model passes (real TenSEAL, the coordinator's kernel,
worker and training loop, the real key holder)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from coordinator.gradient import GradientKernel
from coordinator.store import JobStore
from coordinator.training import MemoryJournal, TrainingInputs, train
from coordinator.worker import BlockSource, ShardWorker
from hefl import sealio, signed
from hefl.algorithm import (
    Hyperparameters,
    add_bias,
    choose_hyperparameters,
    standardize,
    train_replica,
)
from hefl.codec import AggregateStats, PackingLayout
from hefl.errors import DataError, InvalidArgument
from hefl.models import get_model, model_names
from hefl.models.base import Model, quartic_form
from hefl.models.replica import train_model_replica
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.refresh import Recipient
from hefl.protocols.stats import StatsProtocol, StatsRequest, summary_from_proto
from hefl.v1 import hefl_pb2 as pb
from parties.client import PartyConfig, chosen_model
from parties.data import infer_model, load_csv, load_csv_raw
from parties.identity import SigningKey
from parties.keyholder import KeyHolder, associated_data
from parties.sealing import SealedBox, SealingKey
from tests.helpers import COLLECTIVE_BOUND, KEY_HOLDER_BOUND
from tests.test_gradient_and_refresh import (
    InProcessLink,
    InProcessPool,
    decrypted_sums,
    kernel_tolerance,
)
from tools.simulate import SimulationConfig, load_dataset, partition

PARAMS = PARAMETER_SETS[DEFAULT_PARAMETER_SET]
MODELS = {
    "logistic": get_model("logistic"),
    "linear": get_model("linear"),
    "multiclass": get_model("multiclass", classes=3),
    "poisson": get_model("poisson"),
}


def test_every_member_is_registered_by_name():
    assert set(model_names()) >= set(MODELS)
    with pytest.raises(InvalidArgument, match="unknown model 'probit'"):
        get_model("probit")
    with pytest.raises(InvalidArgument, match="at least 2 classes"):
        get_model("multiclass", classes=1).kernel()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kernel_form_is_the_models_polynomial(name):
    """c0 + p(z) evaluated in the kernel's form equals the fitted approximation; the constant
    c0 is what the label term carries."""
    model = MODELS[name]
    z = np.linspace(-3, 3, 61)
    approx = model.approximate_mean(z)
    if name == "linear":
        np.testing.assert_allclose(approx, z)
    elif name == "poisson":
        # The degree-4 exp fit on [-3, 3]: within 20 % of exp everywhere on it.
        assert np.max(np.abs(approx / np.exp(z) - 1)) < 0.2
        np.testing.assert_allclose(approx[30], model.constant())
    else:
        sigmoid = model.sigmoid  # type: ignore[attr-defined]
        np.testing.assert_allclose(approx, sigmoid(z), atol=1e-12)


def test_quartic_form_factors_any_degree_four_polynomial():
    rng = np.random.default_rng(0)
    for _ in range(20):
        c1, c2, c3 = rng.normal(size=3)
        c4 = abs(rng.normal()) + 0.01
        form = quartic_form(c1, c2, c3, c4)
        z = np.linspace(-2, 2, 9)
        np.testing.assert_allclose(
            form.evaluate(form.weight_scale * z),
            c1 * z + c2 * z**2 + c3 * z**3 + c4 * z**4,
            atol=1e-9 * (1 + abs(c1) + abs(c2) + abs(c3) + c4),
        )


def test_logistic_member_replays_the_original_replica():
    rng = np.random.default_rng(1)
    x = add_bias(rng.normal(size=(200, 4)))
    y = (x[:, 0] - x[:, 2] + rng.normal(size=200) > 0).astype(float)
    hyper = choose_hyperparameters(curvature=2.0)
    assert hyper.iterations == 15 and hyper.model == "logistic"
    family = train_model_replica(
        get_model("logistic"), x, y, iterations=15, learning_rate=hyper.learning_rate
    )
    np.testing.assert_allclose(family.weights, train_replica(x, y, hyper).weights, atol=1e-12)


def test_linear_replica_reaches_the_closed_form_ridge_solution():
    """No approximation: enough iterations give the normal equations' solution."""
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(500, 5)) @ np.diag([1.0, 2.0, 0.5, 1.0, 3.0])
    x = add_bias(standardize(raw, raw.mean(axis=0), raw.std(axis=0)))
    y = x @ [1.0, -2.0, 0.5, 0.0, 3.0, 10.0] + rng.normal(size=500)
    l2 = 0.01
    model = get_model("linear")
    result = train_model_replica(model, x, y, iterations=200, learning_rate=0.5, l2=l2)
    penalty = np.diag([l2] * 5 + [0.0]) * len(y)
    exact = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    np.testing.assert_allclose(result.weights, exact, atol=1e-6)


def _write_csv(path: Path, labels: list[str]) -> Path:
    lines = ["f0,f1,y"] + [f"{i},{i * 2},{label}" for i, label in enumerate(labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("model", "labels", "message"),
    [
        ("poisson", ["1", "2", "1.5"], r"row 4, column 'y': '1.5' is not a count"),
        ("poisson", ["1", "-2", "1"], r"row 3, column 'y': '-2' is not a count"),
        ("linear", ["1.5", "x", "2"], r"row 3, column 'y': 'x' is not a number"),
        ("multiclass", ["0", "1", "2.5"], r"row 4, column 'y': '2.5' is not a class index"),
        ("multiclass", ["0", "1", "nan"], r"row 4, column 'y': 'nan' is not a class index"),
        ("linear", ["1.5", "inf", "2"], r"row 3, column 'y': 'inf' is not finite"),
        ("logistic", ["0", "1", "2"], r"label column 'y' is not binary"),
    ],
)
def test_bad_labels_are_refused_naming_row_and_column(tmp_path, model, labels, message):
    path = _write_csv(tmp_path / "a.csv", labels)
    with pytest.raises(DataError, match=message):
        load_csv(path, label="y", model=get_model(model))


def test_a_class_with_no_rows_is_refused():
    model = get_model("multiclass", classes=3)
    with pytest.raises(DataError, match="label column 'y': class 1 has no rows"):
        model.check_labels(np.array([0.0, 2.0, 2.0]), where="a.csv", column="y")


@pytest.mark.parametrize(
    ("labels", "name", "classes"),
    [
        (["yes", "no", "yes"], "logistic", 0),
        (["0", "2", "1", "2"], "multiclass", 3),
        (["0", "7", "3", "40"], "poisson", 0),
        (["0.5", "7", "3"], "linear", 0),
    ],
)
def test_model_inferred_from_the_label(labels, name, classes, caplog):
    caplog.set_level("INFO", logger="hefl.party")
    model = infer_model(labels, column="y")
    assert (model.name, model.classes) == (name, classes)
    assert f"says {name}" in caplog.text


def test_a_joining_party_reads_any_class_until_it_learns_the_jobs(tmp_path):
    train = _write_csv(tmp_path / "train.csv", ["0", "1", "1"])
    test = _write_csv(tmp_path / "test.csv", ["2", "0"])
    raw = load_csv_raw(train, label="y")
    held_out = load_csv_raw(test, label="y")
    joiner = PartyConfig(coordinator="-", data=train, label="y", model="multiclass")
    model = chosen_model(joiner, raw, held_out)
    assert (model.name, model.classes) == ("multiclass", 0)
    np.testing.assert_array_equal(held_out.for_model(model).labels, [2.0, 0.0])
    key_holder = replace(joiner, key_holder=True)
    assert chosen_model(key_holder, raw, held_out).classes == 3
    inferred = chosen_model(replace(joiner, model=""), raw, held_out)
    assert (inferred.name, inferred.classes) == ("multiclass", 3)


def _blocks(context: ts.Context, data: np.ndarray) -> list[list[object]]:
    slots = PARAMS.slots
    blocks = []
    for start in range(0, len(data), slots):
        padded = np.zeros((slots, data.shape[1]))
        padded[: len(data[start : start + slots])] = data[start : start + slots]
        blocks.append(
            [
                GradientKernel.open(ts.ckks_vector(context, padded[:, j]))
                for j in range(data.shape[1])
            ]
        )
    return blocks


@pytest.mark.parametrize("name", sorted(MODELS))
def test_encrypted_kernel_equals_the_models_gradient_sums(name, private_context):
    """Every shape on real ciphertexts, two blocks, gradients at the last level."""
    model = MODELS[name]
    rng = np.random.default_rng(3)
    rows = PARAMS.slots + 200
    data = add_bias(rng.normal(size=(rows, 3)))
    weights = rng.normal(size=model.outputs * 4) * 0.4
    form = model.kernel()
    kernel = GradientKernel(private_context)
    scaled = [
        GradientKernel.open(
            ts.ckks_vector(private_context, np.full(PARAMS.slots, form.weight_scale * w))
        )
        for w in weights
    ]
    sums = kernel.gradient_sums(scaled, _blocks(private_context, data), form)
    got = decrypted_sums(private_context, sums, form)
    expected = model.gradient_sums(weights, data)
    np.testing.assert_allclose(got, expected, rtol=0, atol=kernel_tolerance(expected))


def _labels_for(name: str, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    signal = raw @ [1.0, -0.4, 2.0, 0.3]
    if name == "linear":
        return 3.0 + signal + rng.normal(size=len(raw))
    if name == "poisson":
        return rng.poisson(np.exp(0.3 + 0.15 * (signal - signal.mean()) / signal.std())).astype(
            float
        )
    if name == "multiclass":
        return np.digitize(
            signal + rng.normal(size=len(raw)), np.quantile(signal, [1 / 3, 2 / 3])
        ).astype(float)
    return (signal + rng.normal(size=len(raw)) > -1.0).astype(float)


def _train_encrypted(
    tmp_path: Path,
    private_context: ts.Context,
    public_context: ts.Context,
    model: Model,
    raw,
    labels,
    options,
):
    """Two parties' rows; the key holder summarizes their statistics; the coordinator's loop, a
    real worker and the key holder train and seal the model. Returns (delivered, hyper, x)."""
    features = ["f0", "f1", "f2", "f3"]
    keyholder = KeyHolder(
        context=private_context,
        job_id="job-1",
        features=features,
        options=options,
        signing_key=SigningKey.generate(),
    )
    link = InProcessLink(keyholder)
    protocol = StatsProtocol(features=4, slots=PARAMS.slots)
    request = StatsRequest(
        job_id="job-1",
        features=4,
        shares=(
            ("a", protocol.gen_share(public_context, raw[:150])),
            ("b", protocol.gen_share(public_context, raw[150:])),
        ),
    )
    answer = link.call(pb.KeyHolderTask(decrypt_stats=request.to_proto()), timeout_s=60)
    stats = summary_from_proto(answer.values, features=4)
    x = add_bias(standardize(raw, stats.mean, stats.std))
    hyper = choose_hyperparameters(
        curvature=stats.curvature,
        iterations=options.iterations,
        model=options.model,
        classes=options.classes,
        l2=options.l2,
        rows=len(raw),
    )
    layout = PackingLayout.assign(
        slots=PARAMS.slots, party_rows=[("a", 150), ("b", len(raw) - 150)]
    )
    store = JobStore(tmp_path)
    store.context_path().write_bytes(public_context.serialize())
    label_terms = []
    for party in layout.parties:
        rows = slice(party.offset, party.offset + party.rows)
        for block, column, vector in layout.pack(party.name, x[rows]):
            path = store.column_path(party.name, block, column)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sealio.serialize(ts.ckks_vector(public_context, vector)))
        label_terms.append(
            sealio.serialize(
                ts.ckks_vector(public_context, model.label_term(x[rows], labels[rows]))
            )
        )
    worker = ShardWorker.from_job_directory(
        parameter_set=PARAMS.name,
        job_root=str(tmp_path),
        blocks=[BlockSource(0, ("a", "b"))],
        columns=5,
    )
    recipient, recipient_signing = SealingKey(), SigningKey.generate()
    signature = recipient_signing.sign(
        signed.SEAL_KEY, signed.seal_key_parts("job-1", "a", recipient.public_bytes)
    )
    models, report = train(
        TrainingInputs(
            context=public_context,
            params=PARAMS,
            hyper=hyper,
            rows=len(raw),
            columns=hyper.outputs * 5,
            label_term=sealio.add_vectors(public_context, label_terms, what="label term"),
            recipients=(
                Recipient("a", recipient.public_bytes, recipient_signing.public_bytes, signature),
            ),
        ),
        pool=InProcessPool(worker),
        link=link,
        journal=MemoryJournal(),
    )
    assert report.iterations == hyper.iterations
    (sealed,) = models
    box = SealedBox(sealed.ephemeral_public_key, sealed.nonce, sealed.ciphertext)
    delivered = json.loads(recipient.open(box, associated=associated_data("job-1", "a")))
    return delivered, hyper, x


@pytest.mark.parametrize("name", ["linear", "multiclass", "poisson"])
def test_encrypted_training_equals_the_float64_replica(
    name, tmp_path: Path, private_context, public_context
):
    """The replica-equals-encrypted pattern, for every new member: same polynomial, label term,
    optimizer and iteration count, so the delivered weights equal the float64 replay."""
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(280, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, -1.0, 2.0]
    labels = _labels_for(name, raw, rng)
    model = MODELS[name]
    options = pb.TrainingOptions(
        iterations=8, model=name, classes=model.classes, l2=0.01 if name == "linear" else 0.0
    )
    delivered, hyper, x = _train_encrypted(
        tmp_path, private_context, public_context, model, raw, labels, options
    )
    replica = train_model_replica(
        hyper.family,
        x,
        labels,
        iterations=hyper.iterations,
        learning_rate=hyper.learning_rate,
        l2=hyper.l2,
    )
    assert len(delivered["weights"]) == model.outputs * 5
    # Linear weights are on the label's scale (bias ~3): a relative bound there.
    tolerance = KEY_HOLDER_BOUND * max(1.0, float(np.abs(replica.weights).max()))
    np.testing.assert_allclose(delivered["weights"], replica.weights, atol=tolerance)
    # And the replica does what the model is for (not a vacuous equality of two wrong models).
    metrics = hyper.family.metrics(replica.weights, x, labels)
    headline = {
        "linear": ("r2", 0.8),
        "multiclass": ("accuracy", 0.6),
        "poisson": ("deviance", None),
    }[name]
    if headline[1] is not None:
        assert metrics[headline[0]] > headline[1]
    else:
        null = hyper.family.metrics(np.r_[np.zeros(4), np.log(labels.mean())], x, labels)
        assert metrics["deviance"] < null["deviance"]


@pytest.mark.slow  # real processes: `hefl simulate` (coordinator, Ray, parties, mutual TLS)
@pytest.mark.parametrize(
    ("args", "model", "headline"),
    [
        # Label skew: a joining party may hold fewer classes than the job (it learns them).
        (
            ["--dataset", "iris", "--model", "multiclass", "--split", "label-skew"],
            "multiclass",
            "accuracy",
        ),
        (["--dataset", "diabetes", "--model", "linear"], "linear", "r2"),
        (["--synthetic", "3000x5", "--model", "poisson"], "poisson", "deviance"),
    ],
    ids=["multiclass-iris", "linear-diabetes", "poisson-generated"],
)
def test_hefl_simulate_delivers_each_models_replica(tmp_path, args, model, headline):
    """Through the real processes: the delivered model equals the replica on the same split,
    the report carries the model's own metrics, and the command prints them."""
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "tools.cli", "simulate", "--parties", "2", "--iterations", "5",
        "--workers", "1", "--workdir", str(tmp_path), "--report", str(report_path), *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{headline:<9} encrypted | plaintext" in result.stdout
    report = json.loads(report_path.read_text())
    encrypted = report["encrypted"]
    assert encrypted["hyperparameters"]["model"] == model
    config = SimulationConfig(
        **{k.removeprefix("--"): v for k, v in zip(args[::2], args[1::2], strict=True)}, seed=0
    )  # type: ignore[arg-type]
    config = replace(config, dataset=None) if config.synthetic else config
    train = partition(load_dataset(config), config).train_union
    stats = AggregateStats.of_rows(train.features)
    assert encrypted["curvature"] == pytest.approx(stats.curvature, rel=1e-4)
    hyper = Hyperparameters(**encrypted["hyperparameters"])
    assert hyper.iterations == 5
    x = add_bias(standardize(train.features, stats.mean, stats.std))
    replica = train_model_replica(
        hyper.family, x, train.labels, iterations=5, learning_rate=hyper.learning_rate, l2=hyper.l2
    )
    tolerance = COLLECTIVE_BOUND * max(1.0, float(np.abs(replica.weights).max()))
    np.testing.assert_allclose(encrypted["weights"], replica.weights, atol=tolerance)
    assert np.isfinite(encrypted["metrics"][headline])
    assert np.isfinite(report["plaintext"]["metrics"][headline])
