from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FloatVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("entity_ids", "features", "tensors")
    class EntityIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TensorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FloatVector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FloatVector, _Mapping]] = ...) -> None: ...
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    entity_ids: _containers.ScalarMap[str, str]
    features: _containers.ScalarMap[str, float]
    tensors: _containers.MessageMap[str, FloatVector]
    def __init__(self, entity_ids: _Optional[_Mapping[str, str]] = ..., features: _Optional[_Mapping[str, float]] = ..., tensors: _Optional[_Mapping[str, FloatVector]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "instances", "request_id", "outputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    request_id: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., request_id: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class InstanceResult(_message.Message):
    __slots__ = ("scores", "outputs")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FloatVector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FloatVector, _Mapping]] = ...) -> None: ...
    SCORES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    outputs: _containers.MessageMap[str, FloatVector]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., outputs: _Optional[_Mapping[str, FloatVector]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "model", "model_version", "variant", "results", "feature_age_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    model_version: str
    variant: str
    results: _containers.RepeatedCompositeFieldContainer[InstanceResult]
    feature_age_ms: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., variant: _Optional[str] = ..., results: _Optional[_Iterable[_Union[InstanceResult, _Mapping]]] = ..., feature_age_ms: _Optional[_Iterable[float]] = ...) -> None: ...

class ChooseRequest(_message.Message):
    __slots__ = ("bandit", "request_id", "entity_ids", "context", "n", "exclude")
    class EntityIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BANDIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    bandit: str
    request_id: str
    entity_ids: _containers.ScalarMap[str, str]
    context: _containers.RepeatedScalarFieldContainer[float]
    n: int
    exclude: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bandit: _Optional[str] = ..., request_id: _Optional[str] = ..., entity_ids: _Optional[_Mapping[str, str]] = ..., context: _Optional[_Iterable[float]] = ..., n: _Optional[int] = ..., exclude: _Optional[_Iterable[str]] = ...) -> None: ...

class ChooseResponse(_message.Message):
    __slots__ = ("request_id", "bandit", "arms", "policy", "state_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BANDIT_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    bandit: str
    arms: _containers.RepeatedScalarFieldContainer[str]
    policy: str
    state_version: int
    def __init__(self, request_id: _Optional[str] = ..., bandit: _Optional[str] = ..., arms: _Optional[_Iterable[str]] = ..., policy: _Optional[str] = ..., state_version: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "context", "request_id", "exclude")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    context: _containers.ScalarMap[str, str]
    request_id: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason", "rank_score", "position")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    rank_score: float
    position: int
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., rank_score: _Optional[float] = ..., position: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "items", "versions", "fallback")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    versions: _containers.ScalarMap[str, str]
    fallback: bool
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., versions: _Optional[_Mapping[str, str]] = ..., fallback: _Optional[bool] = ...) -> None: ...
