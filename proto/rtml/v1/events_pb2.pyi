from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContextValue(_message.Message):
    __slots__ = ("string_value", "double_value", "int_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    double_value: float
    int_value: int
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "event_time", "context", "request_id")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ContextValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ContextValue, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: str
    event_time: int
    context: _containers.MessageMap[str, ContextValue]
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., event_time: _Optional[int] = ..., context: _Optional[_Mapping[str, ContextValue]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("request_id", "label", "event_time", "user_id", "item_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    label: float
    event_time: int
    user_id: str
    item_id: str
    def __init__(self, request_id: _Optional[str] = ..., label: _Optional[float] = ..., event_time: _Optional[int] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ItemUpdate(_message.Message):
    __slots__ = ("item_id", "event_time", "category", "embedding", "active", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ContextValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ContextValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event_time: int
    category: str
    embedding: Vector
    active: bool
    attributes: _containers.MessageMap[str, ContextValue]
    def __init__(self, item_id: _Optional[str] = ..., event_time: _Optional[int] = ..., category: _Optional[str] = ..., embedding: _Optional[_Union[Vector, _Mapping]] = ..., active: _Optional[bool] = ..., attributes: _Optional[_Mapping[str, ContextValue]] = ...) -> None: ...
