"""The v1 public event contract: posts, snapshots, snapshot batches, predictions and dead letters.

Validation is strict (no coercion of "5" to 5 or of 5.0 to 5) because producers are other teams'
pipelines: a wrong type is a bug upstream and must be seen, not hidden. Unknown fields are rejected
(``extra="forbid"``) everywhere except in the open maps meant for platform-specific data
(``author`` attributes, ``attributes``, extra ``counts``), whose values are still type-checked and capped.
Additive changes therefore roll out consumer-first: deploy the contract, then let producers send.

``decode_record`` is the single entry point for raw Kafka bytes; it raises ``RejectedRecord`` with a
machine-readable ``reason`` that the worker copies into the dead-letter record.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

# Field caps of the v1 contract (published in the JSON Schemas).
MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 1_000
MAX_DESCRIPTION_CHARS = 20_000
MAX_TAGS = 64
MAX_TAG_CHARS = 100
MAX_URIS = 16
MAX_URI_CHARS = 2_048
MAX_OPEN_KEYS = 64
MAX_OPEN_STR_CHARS = 256
MAX_BATCH_SNAPSHOTS = 10_000
MAX_COUNTER = 2**53 - 1  # exact in a float64, which is how sequences and models see counters
MAX_DURATION_S = 7 * 24 * 3600
EARLIEST = datetime(2005, 1, 1, tzinfo=timezone.utc)
DEFAULT_FUTURE_SKEW = timedelta(days=1)

Id = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
]
Platform = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_\-]*$")]
Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
OpenKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
OpenValue = Union[bool, int, float, Annotated[str, StringConstraints(max_length=MAX_OPEN_STR_CHARS)]]
Uri = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URI_CHARS, pattern=r"^(file|https?)://[^\s]+$")
]


def _time_problem(value: datetime, now: datetime, skew: timedelta) -> str | None:
    """Timestamps must be after 2005 and not further ahead of ``now`` than the allowed clock skew."""
    if value < EARLIEST:
        return f"timestamp {value.isoformat()} is before {EARLIEST.date().isoformat()}"
    if value > now + skew:
        return f"timestamp {value.isoformat()} is more than {skew} ahead of now ({now.isoformat()})"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, str_strip_whitespace=False)


class _OpenMap(BaseModel):
    """A model whose extra keys are allowed but typed (scalar values) and capped in number."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    __pydantic_extra__: dict[OpenKey, OpenValue]

    @model_validator(mode="after")
    def _cap_extra(self) -> "_OpenMap":
        if self.__pydantic_extra__ and len(self.__pydantic_extra__) > MAX_OPEN_KEYS:
            raise ValueError(f"at most {MAX_OPEN_KEYS} extra attributes are allowed")
        return self


class Author(_OpenMap):
    id: Id
    followers: Counter | None = None
    following: Counter | None = None
    posts: Counter | None = None
    verified: bool | None = None
    rating: float | None = None


class Text(_Strict):
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS)] = ""
    description: Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)] = ""
    tags: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_CHARS)]], Field(max_length=MAX_TAGS)
    ] = []


class Media(_Strict):
    image_uris: Annotated[list[Uri], Field(max_length=MAX_URIS)] = []
    video_uri: Uri | None = None
    audio_uri: Uri | None = None
    duration_s: Annotated[float, Field(ge=0, le=MAX_DURATION_S)] | None = None


class Post(_Strict):
    schema_: Literal["post.v1"] = Field("post.v1", alias="schema")
    post_id: Id
    platform: Platform
    created_at: AwareDatetime
    author: Author | None = None
    text: Text = Text()
    media: Media = Media()
    attributes: Annotated[dict[OpenKey, OpenValue], Field(max_length=MAX_OPEN_KEYS)] = {}


class Counts(_OpenMap):
    """Counters at one moment; a platform sends only the counters it has, at least one (checked by
    ``decode_record``)."""

    __pydantic_extra__: dict[OpenKey, Counter]
    views: Counter | None = None
    likes: Counter | None = None
    comments: Counter | None = None
    shares: Counter | None = None
    favorites: Counter | None = None

    def is_empty(self) -> bool:
        return (self.views is None and self.likes is None and self.comments is None and self.shares is None
                and self.favorites is None and not self.__pydantic_extra__)

    def as_dict(self) -> dict[str, int]:
        """The counters that were sent, known and extra alike."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Snapshot(_Strict):
    schema_: Literal["snapshot.v1"] = Field("snapshot.v1", alias="schema")
    post_id: Id
    observed_at: AwareDatetime
    counts: Counts


class SnapshotBatch(_Strict):
    """Many snapshots of one partition in one Kafka record: the fast path past per-record overhead."""

    schema_: Literal["snapshot-batch.v1"] = Field("snapshot-batch.v1", alias="schema")
    snapshots: Annotated[list[Snapshot], Field(min_length=1, max_length=MAX_BATCH_SNAPSHOTS)]


class Prediction(_Strict):
    schema_: Literal["prediction.v1"] = Field("prediction.v1", alias="schema")
    post_id: Id
    model: Literal["static", "temporal"]
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
    as_of: AwareDatetime
    horizon_s: Annotated[int, Field(gt=0)]
    score: Annotated[float, Field(ge=0)]
    log_score: float
    interval: tuple[float, float] | None = None
    explanation: dict[str, Any] = {}
    produced_at: AwareDatetime

    @model_validator(mode="after")
    def _interval_ordered(self) -> "Prediction":
        if self.interval is not None and self.interval[0] > self.interval[1]:
            raise ValueError("interval must be [lo, hi] with lo <= hi")
        return self


class RejectReason(StrEnum):
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_SCHEMA = "unknown_schema"
    WRONG_TOPIC = "wrong_topic"
    INVALID = "invalid"
    KEY_MISMATCH = "key_mismatch"


class DeadLetter(_Strict):
    schema_: Literal["deadletter.v1"] = Field("deadletter.v1", alias="schema")
    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    key_b64: str | None = None
    value_b64: str
    reason: RejectReason
    detail: Annotated[str, StringConstraints(max_length=4_000)]
    rejected_at: AwareDatetime

    @classmethod
    def of(
        cls, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, error: "RejectedRecord"
    ) -> "DeadLetter":
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key_b64=None if key is None else base64.b64encode(key).decode(),
            value_b64=base64.b64encode(value).decode(),
            reason=error.reason,
            detail=error.detail[:4_000],
            rejected_at=datetime.now(timezone.utc),
        )


EVENT_MODELS: dict[str, type[_Strict]] = {
    "post.v1": Post,
    "snapshot.v1": Snapshot,
    "snapshot-batch.v1": SnapshotBatch,
    "prediction.v1": Prediction,
    "deadletter.v1": DeadLetter,
}


class RejectedRecord(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, with the field path: what a producer's engineer needs to fix the record."""
    lines = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(p) for p in problem["loc"]) or "<record>"
        lines.append(f"{where}: {problem['msg']}")
    return "; ".join(lines)


_ANY_EVENT = TypeAdapter(Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="schema_")])


def _semantic_problems(event: _Strict, now: datetime, skew: timedelta) -> list[str]:
    """The checks that need ``now`` or look across fields. They run here, in one plain loop, rather than as
    pydantic validators: a Python validator per snapshot cost ~8 us, 80 % of decoding a batch envelope."""
    if isinstance(event, Post):
        problem = _time_problem(event.created_at, now, skew)
        return [] if problem is None else [f"created_at: {problem}"]
    if isinstance(event, Snapshot):
        items = ((event, ""),)
    elif isinstance(event, SnapshotBatch):
        items = ((s, f"snapshots.{i}.") for i, s in enumerate(event.snapshots))
    else:
        return []
    problems = []
    earliest, latest = EARLIEST, now + skew
    for snapshot, where in items:
        observed = snapshot.observed_at
        if observed < earliest or observed > latest:
            problems.append(f"{where}observed_at: {_time_problem(observed, now, skew)}")
        if snapshot.counts.is_empty():
            problems.append(f"{where}counts: counts must hold at least one counter")
    return problems


def decode_record(
    value: bytes,
    *,
    accept: tuple[str, ...],
    max_bytes: int = 1_048_576,
    now: datetime | None = None,
    max_future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> _Strict:
    """Parse and validate one raw record whose schema must be one of ``accept``.

    Valid records take one pass of pydantic-core over the bytes (the ``schema`` field picks the model);
    only a record that fails it is parsed again, step by step, to name the reason precisely."""
    if len(value) > max_bytes:
        raise RejectedRecord(RejectReason.TOO_LARGE, f"record is {len(value)} bytes, the cap is {max_bytes}")
    try:
        event = _ANY_EVENT.validate_json(value)
    except ValidationError:
        _raise_reason(value, accept)
    if event.schema_ not in accept:
        raise RejectedRecord(RejectReason.WRONG_TOPIC,
                             f"schema {event.schema_!r} is not accepted here (expected {accept})")
    problems = _semantic_problems(event, now or datetime.now(timezone.utc), max_future_skew)
    if problems:
        raise RejectedRecord(RejectReason.INVALID, "; ".join(problems[:20]))
    return event


def _raise_reason(value: bytes, accept: tuple[str, ...]) -> NoReturn:
    """Why a record failed validation, as the first failing step: UTF-8, JSON, object, schema, fields."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedRecord(RejectReason.NOT_UTF8, str(exc)) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RejectedRecord(RejectReason.NOT_JSON, str(exc)) from None
    if not isinstance(raw, dict):
        raise RejectedRecord(RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {type(raw).__name__}")
    schema = raw.get("schema")
    if schema not in EVENT_MODELS:
        raise RejectedRecord(RejectReason.UNKNOWN_SCHEMA, f"unknown schema {schema!r}")
    if schema not in accept:
        raise RejectedRecord(RejectReason.WRONG_TOPIC, f"schema {schema!r} is not accepted here (expected {accept})")
    try:
        # Validate the JSON text, not the parsed dict: strict mode then accepts ISO strings for datetimes.
        EVENT_MODELS[schema].model_validate_json(text)
    except ValidationError as exc:
        raise RejectedRecord(RejectReason.INVALID, describe_validation_error(exc)) from None
    raise RejectedRecord(RejectReason.INVALID, "record failed validation")  # the union and the model disagree


def encode_record(event: BaseModel) -> bytes:
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every v1 event, keyed by its ``schema`` value."""
    return {name: TypeAdapter(model).json_schema(by_alias=True) for name, model in EVENT_MODELS.items()}
