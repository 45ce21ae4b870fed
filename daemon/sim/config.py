"""Simulator settings: one mutable dataclass, changeable live (attribute or PATCH)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

JobOutcome = Literal["ERROR", "ABORTED", "CANCELLED", "NEVER"]
# How status bodies and error records look: both shapes are on record (api-notes.md).
StatusShape = Literal["classic", "v3"]
ErrorShape = Literal["numbered", "plain"]
# Scripted faults for the next job creations, in order: "503" and "429" answer at once,
# "drop" cuts the connection while the body arrives (no job either way); "lost" makes
# the job and then cuts the connection, "504" makes the job and answers 504 (a gateway
# that gave up): the client cannot know the job exists.
CREATE_FAULTS = ("503", "429", "drop", "lost", "504")

DEFAULT_OBJECTS = ("activities", "contact", "campaign", "list", "account")
SECRET_FIELDS = frozenset({"user_secret", "element_token", "signature_key", "refused_tokens"})
_RATE_FIELDS = frozenset({"error_rate", "rate_limit_rate", "retry_after_rate", "drop_rate"})
_NON_NEGATIVE_FIELDS = frozenset({"job_seconds", "latency_seconds", "retry_after_seconds",
                                  "create_delay_seconds", "max_upload_bytes"})


@dataclass
class SimConfig:
    """Knobs of the simulator. Not frozen on purpose: tests and `/_sim/config` change it live."""

    job_seconds: float = 1.0
    complete_word: str = "COMPLETED"
    objects: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTS))
    fail_invalid_emails: bool = True
    job_outcome: JobOutcome | None = None
    keep_bodies: bool = True
    # Secrets: None accepts any non-empty value; never shown by /_sim/state.
    user_secret: str | None = None
    element_token: str | None = None
    signature_key: str | None = None
    auth_broken: bool = False
    # Element tokens answered 401, as a connector instance whose token was revoked.
    refused_tokens: list[str] = field(default_factory=list)
    # Fault injection, decided per API request with random.Random(seed).
    latency_seconds: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_rate: float = 0.5
    retry_after_seconds: int = 1
    drop_rate: float = 0.0
    seed: int | None = None
    # Deterministic faults for the next job creations (see CREATE_FAULTS).
    create_faults: list[str] = field(default_factory=list)
    # Seconds a job creation waits, once the job is made, before it answers.
    create_delay_seconds: float = 0.0
    # classic: status, recordsCount, recordsFailedCount, message/error; v3: jobStatus,
    # recordCount, errorCount, statusMessage, createdDate (epoch ms), CANCELED.
    status_shape: StatusShape = "classic"
    # numbered: {recordNumber, message, record}; plain: the record's fields and its
    # message in "status" ("74234: ..."), no row number.
    error_shape: ErrorShape = "numbered"
    # The first data row's recordNumber in numbered error records: 1 or 0 (both are on
    # record in connectors' answers).
    row_base: int = 1
    # Uploads over this many bytes are answered 429, as the API answers past 6 GB (0: none).
    max_upload_bytes: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name))


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(SimConfig)


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_field(name: str, value: Any) -> None:
    """Raise ValueError naming `name` when `value` does not fit the field."""
    types_ = _field_types()
    if name not in types_:
        raise ValueError(f"unknown field {name!r}")
    if not _matches(value, types_[name]):
        raise ValueError(f"field {name!r} must be {types_[name]}, got {value!r}")
    if name in _RATE_FIELDS and not 0.0 <= value <= 1.0:
        raise ValueError(f"field {name!r} must be between 0 and 1, got {value!r}")
    if name in _NON_NEGATIVE_FIELDS and value < 0:
        raise ValueError(f"field {name!r} must not be negative, got {value!r}")
    if name == "row_base" and value not in (0, 1):
        raise ValueError(f"field 'row_base' must be 0 or 1, got {value!r}")
    if name == "complete_word" and not value:
        raise ValueError("field 'complete_word' must not be empty")
    if name == "create_faults" and not set(value) <= set(CREATE_FAULTS):
        raise ValueError(f"field 'create_faults' takes only {', '.join(CREATE_FAULTS)}")


def apply_patch(config: SimConfig, patch: Any) -> None:
    """Validate every entry of `patch` first, then apply them all (all or nothing)."""
    if not isinstance(patch, dict):
        raise ValueError("body must be a JSON object of SimConfig fields")
    for name, value in patch.items():
        check_field(name, value)
    for name, value in patch.items():
        setattr(config, name, float(value) if _field_types()[name] is float else value)


def public_config(config: SimConfig) -> dict[str, Any]:
    """The config as JSON-ready data; secrets are replaced by whether they are set."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in SECRET_FIELDS:
            out[f"{f.name}_set"] = bool(value) if isinstance(value, list) else value is not None
        else:
            out[f.name] = list(value) if isinstance(value, list) else value
    return out
