from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrustMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUST_MODE_UNSPECIFIED: _ClassVar[TrustMode]
    KEY_HOLDER: _ClassVar[TrustMode]
    COLLECTIVE: _ClassVar[TrustMode]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    WAITING_FOR_PARTIES: _ClassVar[Phase]
    COLLECTING_STATS: _ClassVar[Phase]
    UPLOADING: _ClassVar[Phase]
    TRAINING: _ClassVar[Phase]
    DONE: _ClassVar[Phase]
    FAILED: _ClassVar[Phase]
TRUST_MODE_UNSPECIFIED: TrustMode
KEY_HOLDER: TrustMode
COLLECTIVE: TrustMode
PHASE_UNSPECIFIED: Phase
WAITING_FOR_PARTIES: Phase
COLLECTING_STATS: Phase
UPLOADING: Phase
TRAINING: Phase
DONE: Phase
FAILED: Phase

class TrainingOptions(_message.Message):
    __slots__ = ("iterations", "learning_rate", "l2", "sigmoid_interval", "reveal_intermediate", "model", "classes")
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    SIGMOID_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REVEAL_INTERMEDIATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    iterations: int
    learning_rate: float
    l2: float
    sigmoid_interval: float
    reveal_intermediate: bool
    model: str
    classes: int
    def __init__(self, iterations: _Optional[int] = ..., learning_rate: _Optional[float] = ..., l2: _Optional[float] = ..., sigmoid_interval: _Optional[float] = ..., reveal_intermediate: _Optional[bool] = ..., model: _Optional[str] = ..., classes: _Optional[int] = ...) -> None: ...

class PartyHello(_message.Message):
    __slots__ = ("name", "features", "seal_public_key", "signing_public_key", "seal_key_signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SEAL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SEAL_KEY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: _containers.RepeatedScalarFieldContainer[str]
    seal_public_key: bytes
    signing_public_key: bytes
    seal_key_signature: bytes
    def __init__(self, name: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., seal_public_key: _Optional[bytes] = ..., signing_public_key: _Optional[bytes] = ..., seal_key_signature: _Optional[bytes] = ...) -> None: ...

class RosterEntry(_message.Message):
    __slots__ = ("name", "fingerprint", "signing_public_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    fingerprint: str
    signing_public_key: bytes
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., signing_public_key: _Optional[bytes] = ...) -> None: ...

class Charter(_message.Message):
    __slots__ = ("job_id", "key_holder", "roster", "parameter_set", "options", "context_sha256", "trust")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HOLDER_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    key_holder: str
    roster: _containers.RepeatedCompositeFieldContainer[RosterEntry]
    parameter_set: str
    options: TrainingOptions
    context_sha256: bytes
    trust: TrustMode
    def __init__(self, job_id: _Optional[str] = ..., key_holder: _Optional[str] = ..., roster: _Optional[_Iterable[_Union[RosterEntry, _Mapping]]] = ..., parameter_set: _Optional[str] = ..., options: _Optional[_Union[TrainingOptions, _Mapping]] = ..., context_sha256: _Optional[bytes] = ..., trust: _Optional[_Union[TrustMode, str]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("job_id", "key_holder", "expected_parties", "parameter_set", "options", "charter", "charter_signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HOLDER_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PARTIES_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHARTER_FIELD_NUMBER: _ClassVar[int]
    CHARTER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    key_holder: PartyHello
    expected_parties: int
    parameter_set: str
    options: TrainingOptions
    charter: Charter
    charter_signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., key_holder: _Optional[_Union[PartyHello, _Mapping]] = ..., expected_parties: _Optional[int] = ..., parameter_set: _Optional[str] = ..., options: _Optional[_Union[TrainingOptions, _Mapping]] = ..., charter: _Optional[_Union[Charter, _Mapping]] = ..., charter_signature: _Optional[bytes] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "context_chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    context_chunk: bytes
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., context_chunk: _Optional[bytes] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "features", "expected_parties", "parameter_set", "options", "context_bytes", "charter", "charter_signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PARTIES_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHARTER_FIELD_NUMBER: _ClassVar[int]
    CHARTER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    features: _containers.RepeatedScalarFieldContainer[str]
    expected_parties: int
    parameter_set: str
    options: TrainingOptions
    context_bytes: int
    charter: Charter
    charter_signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., expected_parties: _Optional[int] = ..., parameter_set: _Optional[str] = ..., options: _Optional[_Union[TrainingOptions, _Mapping]] = ..., context_bytes: _Optional[int] = ..., charter: _Optional[_Union[Charter, _Mapping]] = ..., charter_signature: _Optional[bytes] = ...) -> None: ...

class JoinJobRequest(_message.Message):
    __slots__ = ("job_id", "party")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: PartyHello
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[_Union[PartyHello, _Mapping]] = ...) -> None: ...

class GetContextRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("data", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class Standardization(_message.Message):
    __slots__ = ("count", "mean", "std", "curvature")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CURVATURE_FIELD_NUMBER: _ClassVar[int]
    count: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    curvature: float
    def __init__(self, count: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., curvature: _Optional[float] = ...) -> None: ...

class PartySlot(_message.Message):
    __slots__ = ("party", "rows", "offset")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    party: str
    rows: int
    offset: int
    def __init__(self, party: _Optional[str] = ..., rows: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Layout(_message.Message):
    __slots__ = ("slots", "parties")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    slots: int
    parties: _containers.RepeatedCompositeFieldContainer[PartySlot]
    def __init__(self, slots: _Optional[int] = ..., parties: _Optional[_Iterable[_Union[PartySlot, _Mapping]]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "phase", "parties", "expected_parties", "standardization", "layout", "iteration", "iterations", "message", "options")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PARTIES_FIELD_NUMBER: _ClassVar[int]
    STANDARDIZATION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    phase: Phase
    parties: _containers.RepeatedScalarFieldContainer[str]
    expected_parties: int
    standardization: Standardization
    layout: Layout
    iteration: int
    iterations: int
    message: str
    options: TrainingOptions
    def __init__(self, job_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., parties: _Optional[_Iterable[str]] = ..., expected_parties: _Optional[int] = ..., standardization: _Optional[_Union[Standardization, _Mapping]] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., iteration: _Optional[int] = ..., iterations: _Optional[int] = ..., message: _Optional[str] = ..., options: _Optional[_Union[TrainingOptions, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "party")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ...) -> None: ...

class StatsChunk(_message.Message):
    __slots__ = ("header", "piece")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    header: StatsHeader
    piece: bytes
    def __init__(self, header: _Optional[_Union[StatsHeader, _Mapping]] = ..., piece: _Optional[bytes] = ...) -> None: ...

class StatsHeader(_message.Message):
    __slots__ = ("job_id", "party", "rows", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    rows: int
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ..., rows: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitStatsRequest(_message.Message):
    __slots__ = ("job_id", "party", "ciphertexts", "rows", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    rows: int
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ..., rows: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class EncryptedColumn(_message.Message):
    __slots__ = ("block", "feature", "ciphertext")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    block: int
    feature: int
    ciphertext: bytes
    def __init__(self, block: _Optional[int] = ..., feature: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("job_id", "party", "seq", "columns", "label_term", "last", "label_term_signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    LABEL_TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    LABEL_TERM_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    seq: int
    columns: _containers.RepeatedCompositeFieldContainer[EncryptedColumn]
    label_term: bytes
    last: bool
    label_term_signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ..., seq: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[EncryptedColumn, _Mapping]]] = ..., label_term: _Optional[bytes] = ..., last: _Optional[bool] = ..., label_term_signature: _Optional[bytes] = ...) -> None: ...

class UploadSummary(_message.Message):
    __slots__ = ("columns_accepted", "bytes_accepted", "complete")
    COLUMNS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    columns_accepted: int
    bytes_accepted: int
    complete: bool
    def __init__(self, columns_accepted: _Optional[int] = ..., bytes_accepted: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class KeyHolderTasksRequest(_message.Message):
    __slots__ = ("job_id", "party")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("job_id", "party", "task_id", "index", "count", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    task_id: int
    index: int
    count: int
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ..., task_id: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class DecryptStatsTask(_message.Message):
    __slots__ = ("features", "shares")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    features: int
    shares: _containers.RepeatedCompositeFieldContainer[SubmitStatsRequest]
    def __init__(self, features: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SubmitStatsRequest, _Mapping]]] = ...) -> None: ...

class TrainingSetup(_message.Message):
    __slots__ = ("rows", "columns", "iterations", "learning_rate", "l2", "masked_label_term", "weights", "velocity", "weight_scale")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    MASKED_LABEL_TERM_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SCALE_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: int
    iterations: int
    learning_rate: float
    l2: _containers.RepeatedScalarFieldContainer[float]
    masked_label_term: bytes
    weights: _containers.RepeatedScalarFieldContainer[float]
    velocity: _containers.RepeatedScalarFieldContainer[float]
    weight_scale: float
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[int] = ..., iterations: _Optional[int] = ..., learning_rate: _Optional[float] = ..., l2: _Optional[_Iterable[float]] = ..., masked_label_term: _Optional[bytes] = ..., weights: _Optional[_Iterable[float]] = ..., velocity: _Optional[_Iterable[float]] = ..., weight_scale: _Optional[float] = ...) -> None: ...

class RefreshTask(_message.Message):
    __slots__ = ("iteration", "masked_gradients", "weights_offset", "velocity_offset")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    MASKED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_OFFSET_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    masked_gradients: _containers.RepeatedScalarFieldContainer[bytes]
    weights_offset: _containers.RepeatedScalarFieldContainer[float]
    velocity_offset: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, iteration: _Optional[int] = ..., masked_gradients: _Optional[_Iterable[bytes]] = ..., weights_offset: _Optional[_Iterable[float]] = ..., velocity_offset: _Optional[_Iterable[float]] = ...) -> None: ...

class FinalizeTask(_message.Message):
    __slots__ = ("model_mask", "parties")
    MODEL_MASK_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    model_mask: _containers.RepeatedScalarFieldContainer[float]
    parties: _containers.RepeatedCompositeFieldContainer[PartyHello]
    def __init__(self, model_mask: _Optional[_Iterable[float]] = ..., parties: _Optional[_Iterable[_Union[PartyHello, _Mapping]]] = ...) -> None: ...

class RevealTask(_message.Message):
    __slots__ = ("model_mask", "iteration")
    MODEL_MASK_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    model_mask: _containers.RepeatedScalarFieldContainer[float]
    iteration: int
    def __init__(self, model_mask: _Optional[_Iterable[float]] = ..., iteration: _Optional[int] = ...) -> None: ...

class NamedBytes(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class CollectiveTask(_message.Message):
    __slots__ = ("step", "iteration", "inputs", "values", "setup", "stats", "parties")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    step: str
    iteration: int
    inputs: _containers.RepeatedCompositeFieldContainer[NamedBytes]
    values: _containers.RepeatedScalarFieldContainer[float]
    setup: TrainingSetup
    stats: _containers.RepeatedCompositeFieldContainer[SubmitStatsRequest]
    parties: _containers.RepeatedCompositeFieldContainer[PartyHello]
    def __init__(self, step: _Optional[str] = ..., iteration: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[NamedBytes, _Mapping]]] = ..., values: _Optional[_Iterable[float]] = ..., setup: _Optional[_Union[TrainingSetup, _Mapping]] = ..., stats: _Optional[_Iterable[_Union[SubmitStatsRequest, _Mapping]]] = ..., parties: _Optional[_Iterable[_Union[PartyHello, _Mapping]]] = ...) -> None: ...

class CollectiveResult(_message.Message):
    __slots__ = ("outputs", "values")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[NamedBytes]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, outputs: _Optional[_Iterable[_Union[NamedBytes, _Mapping]]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class KeyHolderTask(_message.Message):
    __slots__ = ("decrypt_stats", "setup", "refresh", "finalize", "reveal", "collective")
    DECRYPT_STATS_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_FIELD_NUMBER: _ClassVar[int]
    REVEAL_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    decrypt_stats: DecryptStatsTask
    setup: TrainingSetup
    refresh: RefreshTask
    finalize: FinalizeTask
    reveal: RevealTask
    collective: CollectiveTask
    def __init__(self, decrypt_stats: _Optional[_Union[DecryptStatsTask, _Mapping]] = ..., setup: _Optional[_Union[TrainingSetup, _Mapping]] = ..., refresh: _Optional[_Union[RefreshTask, _Mapping]] = ..., finalize: _Optional[_Union[FinalizeTask, _Mapping]] = ..., reveal: _Optional[_Union[RevealTask, _Mapping]] = ..., collective: _Optional[_Union[CollectiveTask, _Mapping]] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Ciphertexts(_message.Message):
    __slots__ = ("ciphertexts",)
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SealedModels(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[SealedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[SealedModel, _Mapping]]] = ...) -> None: ...

class KeyHolderResult(_message.Message):
    __slots__ = ("values", "ciphertexts", "sealed", "error", "collective")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    values: Values
    ciphertexts: Ciphertexts
    sealed: SealedModels
    error: str
    collective: CollectiveResult
    def __init__(self, values: _Optional[_Union[Values, _Mapping]] = ..., ciphertexts: _Optional[_Union[Ciphertexts, _Mapping]] = ..., sealed: _Optional[_Union[SealedModels, _Mapping]] = ..., error: _Optional[str] = ..., collective: _Optional[_Union[CollectiveResult, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("job_id", "party")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    party: str
    def __init__(self, job_id: _Optional[str] = ..., party: _Optional[str] = ...) -> None: ...

class SealedModel(_message.Message):
    __slots__ = ("party", "ephemeral_public_key", "nonce", "ciphertext", "signature")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    party: str
    ephemeral_public_key: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    def __init__(self, party: _Optional[str] = ..., ephemeral_public_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "workers", "blocks", "iterations", "load_s", "train_s", "gradient_s", "refresh_s", "iteration_s", "upload_bytes", "key_holder_bytes_per_iteration", "worker_bytes_per_iteration", "worker_peak_rss_mb", "options", "curvature", "trust", "keygen_s", "keygen_bytes_per_party")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LOAD_S_FIELD_NUMBER: _ClassVar[int]
    TRAIN_S_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_S_FIELD_NUMBER: _ClassVar[int]
    REFRESH_S_FIELD_NUMBER: _ClassVar[int]
    ITERATION_S_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEY_HOLDER_BYTES_PER_ITERATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_BYTES_PER_ITERATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CURVATURE_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    KEYGEN_S_FIELD_NUMBER: _ClassVar[int]
    KEYGEN_BYTES_PER_PARTY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    workers: int
    blocks: int
    iterations: int
    load_s: float
    train_s: float
    gradient_s: float
    refresh_s: float
    iteration_s: _containers.RepeatedScalarFieldContainer[float]
    upload_bytes: int
    key_holder_bytes_per_iteration: int
    worker_bytes_per_iteration: int
    worker_peak_rss_mb: _containers.RepeatedScalarFieldContainer[float]
    options: TrainingOptions
    curvature: float
    trust: str
    keygen_s: float
    keygen_bytes_per_party: int
    def __init__(self, job_id: _Optional[str] = ..., workers: _Optional[int] = ..., blocks: _Optional[int] = ..., iterations: _Optional[int] = ..., load_s: _Optional[float] = ..., train_s: _Optional[float] = ..., gradient_s: _Optional[float] = ..., refresh_s: _Optional[float] = ..., iteration_s: _Optional[_Iterable[float]] = ..., upload_bytes: _Optional[int] = ..., key_holder_bytes_per_iteration: _Optional[int] = ..., worker_bytes_per_iteration: _Optional[int] = ..., worker_peak_rss_mb: _Optional[_Iterable[float]] = ..., options: _Optional[_Union[TrainingOptions, _Mapping]] = ..., curvature: _Optional[float] = ..., trust: _Optional[str] = ..., keygen_s: _Optional[float] = ..., keygen_bytes_per_party: _Optional[int] = ...) -> None: ...
