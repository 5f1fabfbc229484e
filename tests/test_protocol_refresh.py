"""The masked refresh protocol: both halves against plain Nesterov, its messages, and the key
holder's state machine."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tenseal as ts

from hefl.algorithm import Hyperparameters, l2_vector, nesterov_step
from hefl.errors import ProtocolError
from hefl.params import DEFAULT_PARAMETER_SET, PARAMETER_SETS
from hefl.protocols.refresh import (
    FinalizeRequest,
    Recipient,
    RefreshCoordinator,
    RefreshKeyHolder,
    RefreshRequest,
    RefreshResponse,
    RefreshSetup,
    RevealRequest,
)
from hefl.v1 import hefl_pb2 as pb
from hefl.validate import Expected
from parties.identity import SigningKey
from parties.keyholder import KeyHolder, SecretKey

DEFAULT = PARAMETER_SETS[DEFAULT_PARAMETER_SET]


@pytest.fixture(scope="module", params=sorted(PARAMETER_SETS))
def parameter_set(request, private_context, public_context):
    """(parameters, private context, public context) of each parameter set."""
    params = PARAMETER_SETS[request.param]
    if params.name == DEFAULT_PARAMETER_SET:
        return params, private_context, public_context
    private = params.make_context()
    return params, private, ts.context_from(private.serialize(save_secret_key=False))


#: These tests refresh fresh vectors, not the kernel's gradients (one level per rescale, each
#: with its exact scale: ``tests/test_gradient_and_refresh.py``); the key holder is told so.
FRESH = Expected(values=None, rescales=0)


def _halves(params, private, public, *, columns, iterations, label, seed=2):
    """Both halves, the setup crossing protobuf as it does on the wire."""
    hyper = Hyperparameters(
        iterations=iterations, learning_rate=0.8, l2=0.01, sigmoid_interval=16.0
    )
    coordinator = RefreshCoordinator(
        context=public,
        params=params,
        hyper=hyper,
        rows=1000,
        columns=columns,
        random_bytes=random.Random(seed).randbytes,
    )
    setup = coordinator.setup(ts.ckks_vector(public, label))
    keyholder = RefreshKeyHolder(
        RefreshSetup.from_proto(setup.to_proto()), keys=SecretKey(private), gradient=FRESH
    )
    return hyper, coordinator, keyholder


def _round(coordinator, keyholder, gradients, iteration):
    request = coordinator.request(gradients, iteration=iteration)
    response = keyholder.refresh(RefreshRequest.from_proto(request.to_proto()))
    return request, coordinator.weights(RefreshResponse.from_proto(response.to_proto()))


def test_rounds_follow_plaintext_nesterov(parameter_set):
    """The key holder steps masked values, the coordinator steps the masks: the unmasked
    weights after several rounds equal plain Nesterov on the same gradient sums."""
    params, private, public = parameter_set
    columns, rows = 4, 1000
    rng = np.random.default_rng(1)
    label = rng.normal(size=columns) * 10
    hyper, coordinator, keyholder = _halves(
        params, private, public, columns=columns, iterations=5, label=label
    )
    k = hyper.sigmoid.encrypted_form()[0]
    key = SecretKey(private)
    w = np.zeros(columns)
    v = np.zeros(columns)
    for iteration in range(5):
        slot_values = rng.normal(size=(columns, params.slots))
        gradients = [ts.ckks_vector(public, row) for row in slot_values]

        request, weights = _round(coordinator, keyholder, gradients, iteration)

        # What the key holder sees is far from the true sums.
        seen = np.array([key.decrypt(g, what="masked").sum() for g in request.masked_gradients])
        assert np.min(np.abs(seen - slot_values.sum(axis=1))) > 1e3 * 2 ** (params.mask_bits - 25)
        got = (
            np.array(
                [
                    key.decrypt(c, what="weights").mean() - u
                    for c, u in zip(weights.ciphertexts, weights.unmask, strict=True)
                ]
            )
            / k
        )
        w, v = nesterov_step(
            weights=w,
            velocity=v,
            gradient_sums=slot_values.sum(axis=1),
            label_term=label,
            rows=rows,
            learning_rate=hyper.learning_rate,
            l2=l2_vector(columns, hyper.l2),
            iteration=iteration,
        )
        # Decryption noise of 4096+ masked slots summed, divided by the rows; then k.
        np.testing.assert_allclose(got, w, atol=1e-3)
        revealed = keyholder.reveal(coordinator.reveal(iteration=iteration))
        np.testing.assert_allclose(revealed, v, atol=1e-4)
    final = keyholder.finalize(coordinator.finalize(recipients=[]))
    np.testing.assert_allclose(final, v, atol=1e-4)


def test_the_setup_carries_the_weight_scale_and_only_masked_state(private_context, public_context):
    label = np.array([3.0, -2.0, 1.0])
    hyper, coordinator, _ = _halves(
        DEFAULT, private_context, public_context, columns=3, iterations=4, label=label
    )

    setup = coordinator.setup(ts.ckks_vector(public_context, label))

    assert setup.weight_scale == hyper.sigmoid.encrypted_form()[0]
    assert (setup.rows, setup.columns, setup.iterations) == (1000, 3, 4)
    assert setup.l2 == (0.01, 0.01, 0.0)  # the bias is not regularized
    # w_0 = v_0 = 0 travel as their masks, and the label term masked slot-wise.
    assert min(map(abs, setup.weights + setup.velocity)) > 1.0
    masked_label = SecretKey(private_context).decrypt(setup.masked_label_term, what="label")
    assert np.min(np.abs(masked_label - label)) > 1.0
    assert set(pb.TrainingSetup.DESCRIPTOR.fields_by_name) == {
        "rows",
        "columns",
        "iterations",
        "learning_rate",
        "l2",
        "masked_label_term",
        "weights",
        "velocity",
        "weight_scale",
    }


def test_masks_come_from_the_byte_source(private_context, public_context):
    """A seeded source reproduces the masks exactly; the default (os.urandom) never repeats."""
    label = ts.ckks_vector(public_context, [1.0, 2.0])

    def setup(random_bytes=None):
        hyper = Hyperparameters(iterations=2, learning_rate=0.5, l2=0.0, sigmoid_interval=16.0)
        extra = {} if random_bytes is None else {"random_bytes": random_bytes}
        coordinator = RefreshCoordinator(
            context=public_context, params=DEFAULT, hyper=hyper, rows=10, columns=2, **extra
        )
        return coordinator.setup(label)

    seeded = [setup(random.Random(7).randbytes) for _ in range(2)]
    assert seeded[0].weights == seeded[1].weights and seeded[0].velocity == seeded[1].velocity
    assert setup().weights != setup().weights


def test_messages_round_trip_through_protobuf():
    messages = [
        RefreshSetup(
            rows=10,
            columns=2,
            iterations=3,
            learning_rate=0.5,
            l2=(0.1, 0.0),
            weight_scale=0.6,
            masked_label_term=b"\x01",
            weights=(1.5, -2.5),
            velocity=(3.0, 4.0),
        ),
        RefreshRequest(
            iteration=2,
            masked_gradients=(b"a", b"b"),
            weights_offset=(1.0, 2.0),
            velocity_offset=(3.0, 4.0),
        ),
        RefreshResponse(fresh_weights=(b"x", b"y")),
        RevealRequest(iteration=1, model_mask=(0.25, -0.5)),
        FinalizeRequest(
            model_mask=(1.0, 2.0),
            recipients=(
                Recipient("p", b"k" * 32, b"s" * 32, b"g" * 64),
                Recipient("q", b"j" * 32, b"t" * 32, b"h" * 64),
            ),
        ),
    ]
    for message in messages:
        wire = message.to_proto()
        again = type(wire).FromString(wire.SerializeToString())
        assert type(message).from_proto(again) == message


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"iterations": 0}, "0 iterations"),
        ({"rows": 0}, "0 rows"),
        ({"weight_scale": 0.0}, "weight scale 0.0"),
        ({"l2": [0.1]}, "1, 2 and 2 values for 2 columns"),
    ],
)
def test_the_key_holder_refuses_a_malformed_setup(change, error):
    setup = pb.TrainingSetup(
        rows=10,
        columns=2,
        iterations=3,
        learning_rate=0.5,
        l2=[0.1, 0.0],
        weight_scale=0.6,
        weights=[1.0, 2.0],
        velocity=[3.0, 4.0],
    )
    for name, value in change.items():
        if isinstance(value, list):
            del getattr(setup, name)[:]
            getattr(setup, name).extend(value)
        else:
            setattr(setup, name, value)

    with pytest.raises(ProtocolError, match=error):
        RefreshSetup.from_proto(setup)


@pytest.fixture
def two_iterations(private_context, public_context):
    """Both halves of a 2-iteration job, and gradients to refresh."""
    _, coordinator, keyholder = _halves(
        DEFAULT,
        private_context,
        public_context,
        columns=2,
        iterations=2,
        label=np.array([1.0, -1.0]),
    )
    gradients = [ts.ckks_vector(public_context, np.full(DEFAULT.slots, 0.01)) for _ in range(2)]
    return coordinator, keyholder, gradients


def test_the_key_holder_refreshes_each_iteration_once_in_order(two_iterations):
    coordinator, keyholder, gradients = two_iterations

    with pytest.raises(
        ProtocolError, match="refresh of iteration 1 refused: the next iteration is 0"
    ):
        keyholder.refresh(coordinator.request(gradients, iteration=1))
    _round(coordinator, keyholder, gradients, 0)
    with pytest.raises(
        ProtocolError, match="refresh of iteration 0 refused: the next iteration is 1"
    ):
        keyholder.refresh(coordinator.request(gradients, iteration=0))
    _round(coordinator, keyholder, gradients, 1)
    with pytest.raises(
        ProtocolError, match="refresh of iteration 2 refused: the job has 2 iterations"
    ):
        keyholder.refresh(coordinator.request(gradients, iteration=2))
    assert keyholder.refreshed == 2


def test_the_key_holder_reveals_only_the_last_iteration_and_finalizes_only_at_the_end(
    two_iterations,
):
    coordinator, keyholder, gradients = two_iterations
    finalize = coordinator.finalize(recipients=[])

    _round(coordinator, keyholder, gradients, 0)
    with pytest.raises(ProtocolError, match="finalization refused after 1 of 2 iterations"):
        keyholder.finalize(finalize)
    with pytest.raises(
        ProtocolError, match="reveal of iteration 1 refused: the last refreshed iteration is 0"
    ):
        keyholder.reveal(coordinator.reveal(iteration=1))
    keyholder.reveal(coordinator.reveal(iteration=0))
    _round(coordinator, keyholder, gradients, 1)
    keyholder.finalize(coordinator.finalize(recipients=[]))
    with pytest.raises(ProtocolError, match="the job has 2 iterations"):
        keyholder.refresh(coordinator.request(gradients, iteration=2))


def test_each_half_refuses_the_wrong_number_of_columns(two_iterations):
    coordinator, keyholder, gradients = two_iterations
    request = coordinator.request(gradients, iteration=0)
    short = RefreshRequest(
        0, request.masked_gradients[:1], request.weights_offset, request.velocity_offset
    )

    with pytest.raises(ProtocolError, match="1 gradients, 2 and 2 offsets for 2 columns"):
        keyholder.refresh(short)
    keyholder.refresh(request)  # a refused request changed nothing
    with pytest.raises(ProtocolError, match="model mask has 3 values for 2 columns"):
        keyholder.reveal(RevealRequest(iteration=0, model_mask=(0.0, 0.0, 0.0)))
    with pytest.raises(ProtocolError, match="returned 1 weights, expected 2"):
        coordinator.weights(RefreshResponse(fresh_weights=(b"x",)))


def test_the_key_holder_refuses_training_tasks_before_the_statistics(private_context):
    keyholder = KeyHolder(
        context=private_context,
        job_id="job-1",
        features=["a"],
        options=pb.TrainingOptions(),
        signing_key=SigningKey.generate(),
    )

    for task in (
        pb.KeyHolderTask(setup=pb.TrainingSetup()),
        pb.KeyHolderTask(refresh=pb.RefreshTask(iteration=0)),
        pb.KeyHolderTask(reveal=pb.RevealTask(iteration=0)),
        pb.KeyHolderTask(finalize=pb.FinalizeTask()),
    ):
        kind = task.WhichOneof("task")
        with pytest.raises(ProtocolError, match=f"task '{kind}' refused: .* 'decrypt_stats' stage"):
            keyholder.handle(task)
