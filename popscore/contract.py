"""The v1 public event contract: posts, snapshots, snapshot batches, predictions and dead letters.

Validation is strict (no coercion of "5" to 5 or of 5.0 to 5) because producers are other teams'
pipelines: a wrong type is a bug upstream and must be seen, not hidden. Unknown fields are rejected
(``extra="forbid"``) everywhere except in the open maps meant for platform-specific data
(``author`` attributes, ``attributes``, extra ``counts``), whose values are still type-checked and capped.
Additive changes therefore roll out consumer-first: deploy the contract, then let producers send.

Beyond the field types and caps, a record is rejected when it
- is larger than ``max_bytes`` (checked before anything is parsed);
- nests arrays/objects deeper than ``MAX_JSON_DEPTH`` (the limit of pydantic-core's JSON parser, which parses
  both paths, so no input can exhaust the stack) or holds a number longer than ``MAX_NUMBER_CHARS`` characters
  (so no input can make the parser build huge integers);
- holds ``NaN``/``Infinity`` anywhere (float fields and open maps alike);
- has a timestamp that is not RFC 3339 with a time zone (``2025-01-01T00:00:00Z``, ``...+02:00``): epoch
  numbers and epoch strings, which the datetime parser would read as UTC, are refused;
- repeats a key in one object (parsers disagree on which value wins, so such a record has no one meaning).

``decode_record`` is the single entry point for raw Kafka bytes; it raises ``RejectedRecord`` with a
machine-readable ``reason`` that the worker copies into the dead-letter record, and never anything else,
whatever the bytes. ``decode_snapshots`` reads the snapshots topic: a ``snapshot-batch.v1`` envelope with
some invalid snapshots keeps its valid ones and names each invalid one by its index, which its dead letter
carries (``DeadLetter.index``). A dead letter keeps at most ``DEADLETTER_ORIGINAL_BYTES`` of the original value
and key, so it always fits a Kafka request; ``value_bytes``/``value_sha256``/``value_truncated`` (and the
``key_`` ones) describe the whole original.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from functools import lru_cache, partial
from operator import attrgetter
from typing import Annotated, Any, Literal, NoReturn, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import core_schema, from_json, to_json

# Field caps of the v1 contract (published in the JSON Schemas).
MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 1_000
MAX_DESCRIPTION_CHARS = 20_000
MAX_TAGS = 64
MAX_TAG_CHARS = 100
MAX_URIS = 16
MAX_URI_CHARS = 2_048
MAX_OPEN_KEYS = 64
MAX_INLINE_IMAGE_CHARS = 700_000  # base64 of a ~512 KB picture; the worker's media limits decide what it decodes
MAX_FRAMES = 32  # a video's sampled frames in one post
MAX_OPEN_STR_CHARS = 256
MAX_BATCH_SNAPSHOTS = 10_000
MAX_COUNTER = 2**53 - 1  # exact in a float64, which is how sequences and models see counters
MAX_DURATION_S = 7 * 24 * 3600
EARLIEST = datetime(2005, 1, 1, tzinfo=timezone.utc)
DEFAULT_FUTURE_SKEW = timedelta(days=1)

# Bounds of the JSON text itself, so that decoding does bounded work on any input.
MAX_JSON_DEPTH = 200  # nesting levels; pydantic-core's parser stops there (no v1 event needs more than 5)
MAX_NUMBER_CHARS = 40  # a counter needs 16; a float's shortest round-trip form at most 24
MAX_DETAIL_PROBLEMS = 20  # problems named in one rejection's detail
MAX_LISTED_ERRORS = 10_000  # past this many validation errors, a detail gives their count only
DEADLETTER_ORIGINAL_BYTES = 262_144  # original key/value bytes kept in a dead letter (see DeadLetter.of)

Id = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
]
Platform = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_\-]*$")]
Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
OpenKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
OpenValue = Union[bool, int, float, Annotated[str, StringConstraints(max_length=MAX_OPEN_STR_CHARS)]]
Uri = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URI_CHARS, pattern=r"^(file|https?|s3)://[^\s]+$")
]

# RFC 3339 date-time: T and Z in either case, a space for the T (as RFC 3339 allows), a zone always.
RFC3339 = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
           r"([Zz]|[+\-][0-9]{2}:[0-9]{2})$")


def _timestamp_schema(source: Any, handler: Any) -> core_schema.CoreSchema:
    """From JSON, an RFC 3339 string (the pattern is checked in pydantic-core, not in Python, because a batch
    envelope holds 10,000 of them) parsed into an aware datetime; from Python, an aware datetime as before."""
    rfc3339 = core_schema.custom_error_schema(
        core_schema.str_schema(pattern=RFC3339, strict=True),
        custom_error_type="timestamp_format",
        custom_error_message="Input should be an RFC 3339 timestamp with a timezone, e.g. 2025-01-01T00:00:00Z",
    )
    parsed = core_schema.datetime_schema(tz_constraint="aware", strict=False)
    return core_schema.json_or_python_schema(json_schema=core_schema.chain_schema([rfc3339, parsed]),
                                             python_schema=handler(AwareDatetime))


Timestamp = Annotated[
    datetime,
    GetPydanticSchema(_timestamp_schema),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339}),
]


def _time_problem(value: datetime, now: datetime, skew: timedelta) -> str | None:
    """Timestamps must be after 2005 and not further ahead of ``now`` than the allowed clock skew."""
    if value < EARLIEST:
        return f"timestamp {value.isoformat()} is before {EARLIEST.date().isoformat()}"
    if value > now + skew:
        return f"timestamp {value.isoformat()} is more than {skew} ahead of now ({now.isoformat()})"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, str_strip_whitespace=False,
                              allow_inf_nan=False)


class _OpenMap(BaseModel):
    """A model whose extra keys are allowed but typed (scalar values) and capped in number."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)
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


InlineImage = Annotated[str, StringConstraints(min_length=1, max_length=MAX_INLINE_IMAGE_CHARS)]
"""A picture's file bytes (JPEG, PNG, WebP, GIF...) in base64. Not checked here: a picture the worker cannot
decode costs the post its visual modality, never the post (``popscore.media``)."""


class Frame(_Strict):
    """One frame of a video: inline, or a reference the worker resolves through its media store."""

    image: InlineImage | None = None
    uri: Uri | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Frame":
        if (self.image is None) == (self.uri is None):
            raise ValueError("a frame has exactly one of image (base64) and uri")
        return self


class Media(_Strict):
    """``image`` (inline), ``image_uris`` (references: the worker reads the first through its media store) and
    ``frames`` (a video's sampled frames, encoded together and pooled) feed the visual modality; ``frames`` wins
    over ``image``, which wins over ``image_uris``. ``image`` and ``frames`` came after the first producers, and
    the ``s3`` scheme of references after them (additive: ``file``, ``http`` and ``https`` were accepted before)."""

    image_uris: Annotated[list[Uri], Field(max_length=MAX_URIS)] = []
    video_uri: Uri | None = None
    audio_uri: Uri | None = None
    duration_s: Annotated[float, Field(ge=0, le=MAX_DURATION_S)] | None = None
    image: InlineImage | None = None
    frames: Annotated[list[Frame], Field(max_length=MAX_FRAMES)] = []


class Post(_Strict):
    schema_: Literal["post.v1"] = Field("post.v1", alias="schema")
    post_id: Id
    platform: Platform
    created_at: Timestamp
    author: Author | None = None
    text: Text = Text()
    media: Media = Media()
    attributes: Annotated[dict[OpenKey, OpenValue], Field(max_length=MAX_OPEN_KEYS, fail_fast=True)] = {}


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
    observed_at: Timestamp
    counts: Counts


class SnapshotBatch(_Strict):
    """Many snapshots of one partition in one Kafka record: the fast path past per-record overhead."""

    schema_: Literal["snapshot-batch.v1"] = Field("snapshot-batch.v1", alias="schema")
    snapshots: Annotated[list[Snapshot], Field(min_length=1, max_length=MAX_BATCH_SNAPSHOTS)]


class _LenientBatch(_Strict):
    """A snapshot-batch.v1 envelope whose invalid snapshots are kept as parsed JSON instead of failing the
    whole record: one validation pass still reads every valid snapshot (``decode_snapshots``)."""

    schema_: Literal["snapshot-batch.v1"] = Field("snapshot-batch.v1", alias="schema")
    snapshots: Annotated[
        list[Annotated[Union[Snapshot, Any], Field(union_mode="left_to_right")]],
        Field(min_length=1, max_length=MAX_BATCH_SNAPSHOTS),
    ]


class PredictionFlag(StrEnum):
    FALLBACK = "fallback"  # not a model's output: the baseline for a platform without a servable model set
    OUT_OF_RANGE = "out_of_range"  # an input outside the model's training range, or an output clamped into it
    WITHOUT_POST = "without_post"  # scored before (or without) the post event: no title, age from first sighting
    MEDIA_REJECTED = "media_rejected"  # the post's picture or frames could not be used: scored without the visual
    # modality; explanation.media_problem says why (popscore.media.MediaProblem reasons)


class Prediction(_Strict):
    """``model`` is the kind of prediction (at upload or from the early sequence); ``model_name`` the served
    model that made it (``persistence`` for the fallback), ``trained_for`` the platform that model was trained
    on (null for the fallback) and ``platform`` the post's platform as routing saw it (aliases applied). The
    last four fields came after the first producers, so they are optional."""

    schema_: Literal["prediction.v1"] = Field("prediction.v1", alias="schema")
    post_id: Id
    model: Literal["static", "temporal"]
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
    as_of: Timestamp
    horizon_s: Annotated[int, Field(gt=0)]
    score: Annotated[float, Field(ge=0)]
    log_score: float
    interval: tuple[float, float] | None = None
    explanation: dict[str, Any] = {}
    produced_at: Timestamp
    model_name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    platform: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    trained_for: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    flags: Annotated[list[PredictionFlag], Field(max_length=len(PredictionFlag))] | None = None

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
    PROCESSING_FAILED = "processing_failed"  # valid, but processing it failed on its own (the worker's batch runner)


class DeadLetter(_Strict):
    """A rejected record (or, with ``index``, one snapshot of a batch envelope), with its original bytes.

    Originals are kept up to a cap (``DeadLetter.of``): ``value_bytes``, ``value_sha256`` and
    ``value_truncated`` (and the ``key_`` ones) describe the whole original, so a cut one is still identified."""

    schema_: Literal["deadletter.v1"] = Field("deadletter.v1", alias="schema")
    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    key_b64: str | None = None
    value_b64: str
    reason: RejectReason
    detail: Annotated[str, StringConstraints(max_length=4_000)]
    rejected_at: Timestamp
    index: Annotated[int, Field(ge=0)] | None = None
    value_bytes: Annotated[int, Field(ge=0)] | None = None
    value_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    value_truncated: bool | None = None
    key_bytes: Annotated[int, Field(ge=0)] | None = None
    key_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    key_truncated: bool | None = None

    @classmethod
    def of(
        cls, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, error: "RejectedRecord",
        index: int | None = None, max_original_bytes: int = DEADLETTER_ORIGINAL_BYTES,
    ) -> "DeadLetter":
        """The dead letter of ``value`` (keyed ``key``). Value and key are each kept up to ``max_original_bytes``:
        base64 makes them a third larger, and a dead letter over the producer's request size (1 MB) could never
        be delivered; the default keeps both, the detail and the rest at ~0.7 MB."""
        cap = max(0, max_original_bytes)
        originals: dict[str, Any] = {}
        for name, data in (("value", value), ("key", key)):
            if data is not None:
                originals[f"{name}_b64"] = base64.b64encode(data[:cap]).decode()
                originals[f"{name}_bytes"] = len(data)
                originals[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
                originals[f"{name}_truncated"] = len(data) > cap
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            index=index,
            reason=error.reason,
            detail=error.detail[:4_000],
            rejected_at=datetime.now(timezone.utc),
            **originals,
        )


EVENT_MODELS: dict[str, type[_Strict]] = {
    "post.v1": Post,
    "snapshot.v1": Snapshot,
    "snapshot-batch.v1": SnapshotBatch,
    "prediction.v1": Prediction,
    "deadletter.v1": DeadLetter,
}
SNAPSHOT_SCHEMAS = ("snapshot.v1", "snapshot-batch.v1")


class _Unaccepted(_Strict):
    """A second member for a one-model union (a tagged union needs two): no record has this schema."""

    schema_: Literal["-"] = Field(alias="schema")


class RejectedRecord(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RejectedPart:
    """One invalid snapshot of a batch envelope."""

    index: int  # position in the envelope's "snapshots" list
    value: bytes  # that element, re-serialised as compact JSON
    error: RejectedRecord


@dataclass(frozen=True)
class DecodedSnapshots:
    """What a record of the snapshots topic holds: its valid snapshots and its invalid envelope elements."""

    snapshots: list[Snapshot]  # the valid ones, in envelope order
    rejected: list[RejectedPart]  # the invalid ones, in envelope order
    envelope: bool = False  # a snapshot-batch.v1 record (else a single snapshot.v1)
    indices: list[int] = field(default_factory=list)  # the envelope position of each valid snapshot


def describe_validation_error(error: ValidationError, limit: int = MAX_DETAIL_PROBLEMS, skip: int = 0) -> str:
    """One line per problem, with the field path: what a producer's engineer needs to fix the record.
    At most ``limit`` problems are named (a broken envelope can have 10,000); ``skip`` leading path items are
    left out (a union's tag). Listing costs per problem, so past ``MAX_LISTED_ERRORS`` only the count is given."""
    count = error.error_count()
    if count > MAX_LISTED_ERRORS:
        return f"{count} problems (too many to list)"
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    lines = [f"{'.'.join(str(p) for p in problem['loc'][skip:]) or '<record>'}: {problem['msg']}"
             for problem in problems[:limit]]
    if count > limit:
        lines.append(f"and {count - limit} more problems")
    return "; ".join(lines)


@lru_cache(maxsize=64)
def _adapter(accept: tuple[str, ...]) -> TypeAdapter:
    """A union of the accepted models only: a record of another schema fails at its tag, unvalidated."""
    models = tuple(EVENT_MODELS[name] for name in accept if name in EVENT_MODELS)
    if not models:
        return _ANY_EVENT
    return TypeAdapter(Annotated[Union[models], Field(discriminator="schema_")]) if len(models) > 1 \
        else TypeAdapter(Annotated[Union[models + (_Unaccepted,)], Field(discriminator="schema_")])


_ANY_EVENT = TypeAdapter(Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="schema_")])
_SNAPSHOT_EVENT = TypeAdapter(Annotated[Union[Snapshot, _LenientBatch], Field(discriminator="schema_")])
_SNAPSHOT_LIST = TypeAdapter(list[Snapshot])

_FIELDS_SET = attrgetter("__pydantic_fields_set__")
_OBSERVED_AT = attrgetter("observed_at")
_COUNTS = attrgetter("counts")
_ELEMENT_JSON = partial(to_json, inf_nan_mode="constants")


def _short(value: Any) -> str:
    """A bounded description of an arbitrary JSON value, for a detail."""
    if isinstance(value, str):
        return repr(value[:64]) + ("..." if len(value) > 64 else "")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:64]
    return f"(a JSON {'object' if isinstance(value, dict) else 'array'})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", float: "a number", list: "an array"}.get(type(value), "a value")


# --- checks after validation ----------------------------------------------------------------------------
# They run in plain loops (mostly C-level maps) over the validated models rather than as pydantic validators:
# a Python validator per snapshot would cost more than validating the snapshot.

# Datetimes that share a tzinfo object compare without calling utcoffset(): the bounds use the one that
# pydantic-core gives every UTC timestamp it parses (any other tzinfo still compares correctly, only slower).
_PARSED_UTC = TypeAdapter(Timestamp).validate_json(b'"2005-01-01T00:00:00Z"').tzinfo
_EARLIEST_PARSED = EARLIEST.astimezone(_PARSED_UTC)


def _snapshot_checks(snapshots: list[Snapshot], value: bytes, now: datetime,
                     skew: timedelta) -> tuple[dict[int, list[str]], int]:
    """(problems by index: a timestamp out of range, counts without a counter; the object members the snapshots
    were built from, for the duplicate-key check). ``value``: the JSON text they come from."""
    if len(snapshots) == 1:  # a single record: the same checks without the list machinery
        snapshot = snapshots[0]
        when, counts = snapshot.observed_at, snapshot.counts
        problems: dict[int, list[str]] = {}
        if when < EARLIEST or when > now + skew:
            problems[0] = [f"observed_at: {_time_problem(when, now, skew)}"]
        if counts.is_empty():
            problems.setdefault(0, []).append("counts: counts must hold at least one counter")
        return problems, len(snapshot.__pydantic_fields_set__) + len(counts.__pydantic_fields_set__)
    problems = {}
    if not snapshots:
        return problems, 0
    latest = (now + skew).astimezone(_PARSED_UTC)
    observed = list(map(_OBSERVED_AT, snapshots))
    if min(observed) < _EARLIEST_PARSED or max(observed) > latest:
        for i, when in enumerate(observed):
            if when < _EARLIEST_PARSED or when > latest:
                problems.setdefault(i, []).append(f"observed_at: {_time_problem(when, now, skew)}")
    all_counts = list(map(_COUNTS, snapshots))
    sizes = list(map(len, map(_FIELDS_SET, all_counts)))
    # Without an explicit null anywhere, counts that name a counter hold it; with one, look at the values.
    if b"null" in value:
        empty = [i for i, c in enumerate(all_counts) if c.is_empty()]
    else:
        empty = [i for i, n in enumerate(sizes) if n == 0] if 0 in sizes else []
    for i in empty:
        problems.setdefault(i, []).append("counts: counts must hold at least one counter")
    return problems, sum(map(len, map(_FIELDS_SET, snapshots))) + sum(sizes)


def _post_members(post: Post) -> int:
    """``_members`` of a post, unrolled (a post's open maps hold scalars only)."""
    given = post.__pydantic_fields_set__
    members = len(given) + len(post.attributes)
    if post.author is not None:
        members += len(post.author.__pydantic_fields_set__)
    if "text" in given:
        members += len(post.text.__pydantic_fields_set__)
    if "media" in given:
        members += len(post.media.__pydantic_fields_set__)
    return members


def _members(node: Any) -> int:
    """The object members a validated value was built from: a key given twice counts once."""
    if isinstance(node, BaseModel):
        given = node.__pydantic_fields_set__
        return len(given) + sum(_members(v) for k, v in node.__dict__.items()
                                if k in given and isinstance(v, (BaseModel, dict, list, tuple)))
    if isinstance(node, dict):
        return len(node) + sum(_members(v) for v in node.values() if isinstance(v, (BaseModel, dict, list, tuple)))
    if isinstance(node, (list, tuple)):
        return sum(_members(v) for v in node if isinstance(v, (BaseModel, dict, list, tuple)))
    return 0


def _members_at_most(value: bytes, members: int) -> bool:
    """Whether the well-formed JSON text ``value`` provably has no more object members than ``members``.

    Every key ends with ``"`` and then ``:`` (compact JSON, what producers send), so the count of ``":`` is at
    least the count of members unless a string holds an escaped quote or a key is followed by whitespace. It can
    over-count (a string value starting with ``:``), never under-count, so equality with the members of the
    validated value proves that no key was repeated. When it proves nothing, the caller looks for the key."""
    if 0x5C in value and b'\\"' in value:  # (single bytes as ints: a memchr, not a substring search)
        return False
    if ((0x20 in value and b" :" in value) or (0x0A in value and b"\n:" in value)
            or (0x09 in value and b"\t:" in value) or (0x0D in value and b"\r:" in value)):
        return False
    return value.count(b'":') == members


class _Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates kept."""


def _pairs_tree(value: bytes) -> Any:
    """A well-formed (already validated) JSON text with its objects as ``_Pairs``; numbers stay text."""
    return json.loads(value.decode("utf-8"), object_pairs_hook=_Pairs, parse_int=str, parse_float=str,
                      parse_constant=str)


def _duplicate_in(node: Any, where: str) -> str | None:
    """The first repeated key in ``node`` and below, as ``path: duplicate key 'k'``."""
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, _ in node:
            if key in seen:
                return f"{where or '<record>'}: duplicate key {_short(key)}"
            seen.add(key)
        children: Any = ((f"{where}.{key}" if where else key, child) for key, child in node)
    else:
        children = ((f"{where}.{i}" if where else str(i), child) for i, child in enumerate(node))
    for path, child in children:
        if isinstance(child, list):
            found = _duplicate_in(child, path)
            if found is not None:
                return found
    return None


_NUMBER_MASK = bytes(0x30 if c in b"0123456789+-.eE" else 0x20 for c in range(256))
_LONG_NUMBER = b"0" * (MAX_NUMBER_CHARS + 1)
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def _long_number(value: bytes) -> str | None:
    """A number longer than ``MAX_NUMBER_CHARS`` in the well-formed JSON text ``value``, described, or None.
    A run of number characters that long is rare, so strings are set aside only when there is one."""
    if _LONG_NUMBER not in value.translate(_NUMBER_MASK):
        return None
    text = _ESCAPE.sub(b"", value) if b"\\" in value else value
    outside = b" ".join(text.split(b'"')[::2]).translate(_NUMBER_MASK)  # a string's quotes are never escaped now
    start = outside.find(_LONG_NUMBER)
    if start < 0:
        return None
    end = outside.find(b" ", start)
    length = (len(outside) if end < 0 else end) - start
    return f"a JSON number of {length} characters (at most {MAX_NUMBER_CHARS} are allowed)"


def _record_problem(event: _Strict, value: bytes, now: datetime, skew: timedelta) -> str | None:
    """What a whole record that pydantic accepted still breaks, or None."""
    if isinstance(event, (Snapshot, SnapshotBatch)):
        # Every number of a valid snapshot is a counter (at most 16 digits): no number-length check.
        snapshots = event.snapshots if isinstance(event, SnapshotBatch) else [event]
        problems, members = _snapshot_checks(snapshots, value, now, skew)
        if problems:
            prefix = "snapshots.{}." if isinstance(event, SnapshotBatch) else ""
            lines = [prefix.format(i) + p for i in sorted(problems) for p in problems[i]]
            return "; ".join(lines[:MAX_DETAIL_PROBLEMS])
        members += len(event.__pydantic_fields_set__) if isinstance(event, SnapshotBatch) else 0
    else:
        if isinstance(event, Post):
            problem = _time_problem(event.created_at, now, skew)
            if problem is not None:
                return f"created_at: {problem}"
        problem = _long_number(value)
        if problem is not None:
            return problem
        members = _post_members(event) if isinstance(event, Post) else _members(event)
    if not _members_at_most(value, members):
        return _duplicate_in(_pairs_tree(value), "")
    return None


# --- decoding --------------------------------------------------------------------------------------------

def _unexpected(exc: Exception) -> RejectedRecord:
    return RejectedRecord(RejectReason.INVALID, f"decoding failed unexpectedly: {type(exc).__name__}: "
                                                f"{str(exc)[:500]}")


def _check_size(value: bytes, max_bytes: int) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise RejectedRecord(RejectReason.INVALID, f"a record value must be bytes, not {type(value).__name__}")
    if len(value) > max_bytes:
        raise RejectedRecord(RejectReason.TOO_LARGE, f"record is {len(value)} bytes, the cap is {max_bytes}")


def decode_record(
    value: bytes,
    *,
    accept: tuple[str, ...],
    max_bytes: int = 1_048_576,
    now: datetime | None = None,
    max_future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> _Strict:
    """Parse and validate one raw record whose schema must be one of ``accept``: the event, or RejectedRecord.

    Valid records take one pass of pydantic-core over the bytes (the ``schema`` field picks the model);
    only a record that fails it is parsed again, step by step, to name the reason precisely. Any other
    exception raised while decoding becomes a rejection too: no input may stop the worker."""
    try:
        _check_size(value, max_bytes)
        try:
            event = _adapter(accept).validate_json(value)
        except ValidationError as exc:
            _raise_reason(value, accept, exc)
        if event.schema_ not in accept:
            raise RejectedRecord(RejectReason.WRONG_TOPIC,
                                 f"schema {event.schema_!r} is not accepted here (expected {accept})")
        problem = _record_problem(event, value, now or datetime.now(timezone.utc), max_future_skew)
        if problem is not None:
            raise RejectedRecord(RejectReason.INVALID, problem)
        return event
    except RejectedRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        raise _unexpected(exc) from None


def decode_snapshots(
    value: bytes,
    *,
    max_bytes: int = 1_048_576,
    now: datetime | None = None,
    max_future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> DecodedSnapshots:
    """For the snapshots topic: a snapshot.v1 record or a snapshot-batch.v1 envelope. Raises RejectedRecord when
    the record as a whole is unusable (too large, not UTF-8, not JSON, not an object, unknown/wrong schema, an
    envelope whose structure is wrong: missing/non-list snapshots, more than 10,000, extra top-level keys, empty,
    a repeated top-level key); otherwise returns the valid snapshots and the invalid elements with their reasons
    (a single snapshot.v1 that is invalid raises RejectedRecord as ``decode_record`` does).

    A valid record takes one validation pass; an envelope's invalid elements come out of that pass as parsed
    JSON, and only they are validated again, together, to name their problems."""
    try:
        _check_size(value, max_bytes)
        try:
            event = _SNAPSHOT_EVENT.validate_json(value)
        except ValidationError as exc:
            _raise_reason(value, SNAPSHOT_SCHEMAS, exc)
        now = now or datetime.now(timezone.utc)
        if isinstance(event, Snapshot):
            problem = _record_problem(event, value, now, max_future_skew)
            if problem is not None:
                raise RejectedRecord(RejectReason.INVALID, problem)
            return DecodedSnapshots([event], [], envelope=False, indices=[0])
        return _split_envelope(event, value, now, max_future_skew)
    except RejectedRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        raise _unexpected(exc) from None


def _split_envelope(batch: _LenientBatch, value: bytes, now: datetime, skew: timedelta) -> DecodedSnapshots:
    elements = batch.snapshots
    if set(map(type, elements)) == {Snapshot}:
        valid, failed = range(len(elements)), []
        snapshots = elements
    else:
        valid = [i for i, e in enumerate(elements) if type(e) is Snapshot]
        failed = [i for i, e in enumerate(elements) if type(e) is not Snapshot]
        snapshots = [elements[i] for i in valid]
    checks, members = _snapshot_checks(snapshots, value, now, skew)
    problems = {valid[j]: "; ".join(p) for j, p in checks.items()}
    members += len(batch.__pydantic_fields_set__) + sum(_members(elements[i]) for i in failed)
    if not _members_at_most(value, members):
        tree = _pairs_tree(value)
        duplicate = _duplicate_in(_Pairs((k, []) for k, _ in tree), "")  # the envelope's own keys
        if duplicate is not None:
            raise RejectedRecord(RejectReason.INVALID, duplicate)
        listed = next(child for key, child in tree if key == "snapshots")
        skip = set(failed).union(problems)  # already rejected
        for i, element in enumerate(listed):
            if i not in skip and isinstance(element, list):
                duplicate = _duplicate_in(element, "")
                if duplicate is not None:
                    problems[i] = duplicate
    if not problems and not failed:
        return DecodedSnapshots(snapshots, [], envelope=True, indices=list(valid))
    serialize = partial(Snapshot.__pydantic_serializer__.to_json, by_alias=True, exclude_unset=True)
    rejected = {i: RejectedPart(i, serialize(elements[i]), RejectedRecord(RejectReason.INVALID, detail))
                for i, detail in problems.items()}
    if failed:
        texts = list(map(_ELEMENT_JSON, (elements[i] for i in failed)))
        for i, text, detail in zip(failed, texts, _element_problems(texts)):
            rejected[i] = RejectedPart(i, text, RejectedRecord(RejectReason.INVALID, detail))
    kept = [i for i in valid if i not in problems]
    return DecodedSnapshots([elements[i] for i in kept], [rejected[i] for i in sorted(rejected)], envelope=True,
                            indices=kept)


def _element_problems(texts: list[bytes]) -> list[str]:
    """Why each of these envelope elements (JSON texts) is not a valid snapshot: one validation pass for all."""
    try:
        _SNAPSHOT_LIST.validate_json(b"[" + b",".join(texts) + b"]")
    except ValidationError as exc:
        count = exc.error_count()
        if count > MAX_LISTED_ERRORS:
            return [f"not a valid snapshot (the envelope's invalid snapshots have {count} problems, too many to "
                    f"list)"] * len(texts)
        lines: dict[int, list[str]] = {}
        for problem in exc.errors(include_url=False, include_context=False, include_input=False):
            index, *where = problem["loc"]
            found = lines.setdefault(index, [])  # type: ignore[arg-type]
            if len(found) < MAX_DETAIL_PROBLEMS:
                found.append(f"{'.'.join(map(str, where)) or '<snapshot>'}: {problem['msg']}")
        return ["; ".join(lines.get(i, ["snapshot failed validation"])) for i in range(len(texts))]
    return ["snapshot failed validation"] * len(texts)  # the union and the list disagree


def _raise_reason(value: bytes, accept: tuple[str, ...], error: ValidationError) -> NoReturn:
    """Why a record failed validation (``error``, from a union tagged by ``schema``), as the first failing step:
    UTF-8, JSON (with its depth and number bounds), object, schema, fields. The parser is pydantic-core's,
    bounded in depth and in number size; the fields' problems are those of the validation that failed."""
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedRecord(RejectReason.NOT_UTF8, str(exc)) from None
    try:
        raw = from_json(value)
    except ValueError as exc:
        message = str(exc)[:300]
        if message.startswith("recursion limit exceeded"):
            raise RejectedRecord(RejectReason.INVALID, f"JSON nested deeper than {MAX_JSON_DEPTH} levels "
                                                       f"({message})") from None
        if message.startswith("number out of range"):
            raise RejectedRecord(RejectReason.INVALID, f"a JSON number longer than {MAX_NUMBER_CHARS} characters "
                                                       f"({message})") from None
        raise RejectedRecord(RejectReason.NOT_JSON, message) from None
    if not isinstance(raw, dict):
        raise RejectedRecord(RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(raw)}")
    schema = raw.get("schema")
    if not isinstance(schema, str) or schema not in EVENT_MODELS:
        raise RejectedRecord(RejectReason.UNKNOWN_SCHEMA, f"unknown schema {_short(schema)}")
    if schema not in accept:
        raise RejectedRecord(RejectReason.WRONG_TOPIC, f"schema {schema!r} is not accepted here (expected {accept})")
    raise RejectedRecord(RejectReason.INVALID, describe_validation_error(error, skip=1))


def encode_record(event: BaseModel) -> bytes:
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every v1 event, keyed by its ``schema`` value."""
    return {name: TypeAdapter(model).json_schema(by_alias=True) for name, model in EVENT_MODELS.items()}
