"""The settings: frozen, typed, one object every module reads; and the converters that
check one raw value against them.

:mod:`daemon.config` builds them from the TOML file, the environment, ``*_FILE``
variables and systemd credentials.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal


class Secret:
    """A secret string that never shows itself in ``str()``, ``repr()`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class ConfigError(Exception):
    """A configuration problem; ``key`` is the setting or variable at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ApiSettings:
    base_url: str
    hub: str = "marketing"
    user_secret: Secret = Secret()
    organization_secret: Secret = Secret()
    element_token: Secret = Secret()
    request_timeout_seconds: float = 300.0
    retry_deadline_seconds: float = 86400.0
    requests_per_second: int = 0  # 0: no limit


@dataclass(frozen=True)
class SpoolSettings:
    root: Path = Path("/var/spool/bulkdrop")
    state_dir: Path = Path()  # left as Path(): <root>/.state/<node_id>
    default_object: str = ""
    default_instance: str = ""  # "": the only instance, else [api]'s when it is one
    settle_seconds: float = 1.0
    node_id: str = field(default_factory=socket.gethostname)
    rescan_seconds: float = 30.0
    force_polling: bool = False
    max_line_length: int = 1 << 20
    ledger_retention_days: int = 90  # finished files' rows kept this long; 0: for ever
    # done/<path as dropped>, or done/<day it finished>/<path as dropped>
    done_layout: Literal["mirror", "daily"] = "mirror"

    def __post_init__(self) -> None:
        if self.state_dir == Path():
            object.__setattr__(self, "state_dir", self.root / ".state" / self.node_id)


@dataclass(frozen=True)
class WorkersSettings:
    uploads: int = 4
    max_active_jobs: int = 32
    poll_interval_seconds: float = 5.0
    poll_max_interval_seconds: float = 60.0
    job_timeout_seconds: float = 86400.0
    shutdown_grace_seconds: float = 20.0


# Below the API's limit of 6 GB and 3,600 s per upload (past either it answers 429).
DEFAULT_MAX_BYTES_PER_JOB = 1 << 30
MIN_MAX_BYTES_PER_JOB = 1 << 10


@dataclass(frozen=True)
class ObjectSettings:
    metadata: Mapping[str, Any] | None = None
    hub: str | None = None
    rename_columns: Mapping[str, str] = field(default_factory=dict)
    drop_columns: tuple[str, ...] = ()
    require_columns: tuple[str, ...] = ()
    max_rows_per_job: int = 0
    max_bytes_per_job: int = DEFAULT_MAX_BYTES_PER_JOB
    partial: Literal["done", "failed"] = "done"  # where a file with some failed records goes


@dataclass(frozen=True)
class CallbackSettings:
    public_url: str = ""
    signature_key: Secret = Secret()


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError when malformed."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
    else:
        host, sep, port = listen.rpartition(":")
        if ":" in host:  # a bare IPv6 address is ambiguous without brackets
            sep = ""
    if not (sep and host and port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(listen)
    return host, int(port)


@dataclass(frozen=True)
class HttpSettings:
    listen: str = "127.0.0.1:8470"
    # /readyz is 503 when any instance is not ready ("all" must be), or only when none is.
    ready_when: Literal["all", "any"] = "all"
    # The web view's buttons (retry, send failed rows again): POST routes exist only then.
    actions: bool = False
    # Names besides loopback and the listen address the web view answers to, comma
    # separated (the name people open it by); any other Host gets 421.
    view_hosts: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0] if self.listen else ""

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1] if self.listen else 0


@dataclass(frozen=True)
class LogSettings:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


NOTIFY_ON = ("FAILED", "REJECTED", "partial", "COMPLETE")


@dataclass(frozen=True)
class NotifyTarget:
    """One ``[[notify.targets]]`` table: where a finished file is told, and when."""
    name: str
    url: str
    on: tuple[str, ...] = ("FAILED", "REJECTED", "partial")
    format: Literal["json", "slack"] = "json"
    signature_key: Secret = Secret()
    instances: tuple[str, ...] = ()  # only files of these instances (none: all)
    objects: tuple[str, ...] = ()    # only files of these objects (none: all)

    def wants(self, event: str, instance: str | None, obj: str | None) -> bool:
        return event in self.on and (not self.instances or instance in self.instances) and (
            not self.objects or obj in self.objects)


@dataclass(frozen=True)
class NotifySettings:
    retry_deadline_seconds: float = 86400.0
    targets: tuple[NotifyTarget, ...] = ()


_DEFAULT_OBJECT = ObjectSettings()
DEFAULT_INSTANCE = "default"  # [api] as an instance


@dataclass(frozen=True)
class InstanceSettings:
    """One connector instance: where and as whom to call the API (``api``: its own base
    URL, hub, secrets and rate, [api]'s timeouts), its own limits and objects."""
    name: str
    api: ApiSettings
    uploads: int = 4
    max_active_jobs: int = 32
    default_object: str = ""
    objects: Mapping[str, ObjectSettings] = field(default_factory=dict)

    def object_settings(self, name: str) -> ObjectSettings:
        return self.objects.get(name, _DEFAULT_OBJECT)

    def hub_for(self, obj: str) -> str:
        return self.object_settings(obj).hub or self.api.hub


@dataclass(frozen=True)
class Route:
    """Where a file below inbox/ goes: an instance and an object, or why nowhere."""
    instance: str | None
    obj: str | None
    problem: str | None = None


@dataclass(frozen=True)
class Settings:
    api: ApiSettings
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    workers: WorkersSettings = field(default_factory=WorkersSettings)
    objects: Mapping[str, ObjectSettings] = field(default_factory=dict)
    callback: CallbackSettings = field(default_factory=CallbackSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    source: Path | None = None
    # "section.key" -> where its value came from: "file", "env BULKDROP_...",
    # "credential <path>", "command"; keys not listed have their default.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # The connector instances by name: [api] alone is one, "default"; with
    # [instances.<name>] tables, those (and [api] too when it has an element_token).
    instances: Mapping[str, InstanceSettings] = field(default_factory=dict)
    default_instance: str | None = None  # where inbox/<object>/ and inbox/ go
    instance_folders: bool = False  # [instances.*] given: inbox/<instance>/ routes
    notify: NotifySettings = field(default_factory=NotifySettings)

    def __post_init__(self) -> None:
        if not self.instances:  # built by hand (not by load_settings): [api] alone
            only = InstanceSettings(DEFAULT_INSTANCE, self.api, self.workers.uploads,
                                    self.workers.max_active_jobs, self.spool.default_object,
                                    self.objects)
            object.__setattr__(self, "instances", {DEFAULT_INSTANCE: only})
            object.__setattr__(self, "default_instance", DEFAULT_INSTANCE)

    def instance(self, name: str | None = None) -> InstanceSettings:
        """The instance *name* (KeyError if none is so named), else the default one, else
        the first (for commands that need one: ``validate``, ``submit``)."""
        if name is not None:
            return self.instances[name]
        return self.instances[self.default_instance or next(iter(self.instances))]

    def instance_or_default(self, name: str | None) -> InstanceSettings:
        """The instance *name* while it is configured, else the default one."""
        found = self.instances.get(name) if name is not None else None
        return found or self.instance()

    def object_settings(self, name: str) -> ObjectSettings:
        """An object's settings as the default instance has them."""
        return self.instance().object_settings(name)

    def hub_for(self, obj: str) -> str:
        return self.instance().hub_for(obj)

    def route(self, rel: PurePath) -> Route:
        """The instance and object of a file dropped as ``inbox/<rel>``: the first folder
        names an instance when it is one (with ``[instances.*]`` given), else an object of
        the default instance; a file with no object folder goes to its instance's
        ``default_object``."""
        folders = rel.parts[:-1]
        if self.instance_folders and folders and folders[0] in self.instances:
            name, rest, where = folders[0], folders[1:], f"inbox/{folders[0]}/"
        elif self.default_instance is None:
            names = ", ".join(sorted(self.instances))
            where = (f"inbox/{folders[0]}/ names no connector instance" if folders else
                     "files directly in inbox/ go to no connector instance")
            return Route(None, None, (f"{where} (configured: {names}): drop it into "
                                      "inbox/<instance>/<object>/, or set [spool] "
                                      "default_instance"))
        else:
            name, rest, where = self.default_instance, folders, "inbox/"
        if rest:
            return Route(name, rest[0])
        obj = self.instances[name].default_object
        if obj:
            return Route(name, obj)
        key = ("[spool] default_object" if where == "inbox/" else
               f"[instances.{name}] default_object")
        return Route(name, None, (f"files directly in {where} need an object: drop it into "
                                  f"{where}<object>/ (e.g. {where}contact/) or set {key}"))

    @property
    def inbox_folders(self) -> list[str]:
        """The folders below inbox/ the config names (``<object>`` of the default
        instance, ``<instance>/<object>`` of the others): each is made at start."""
        named: set[str] = set()
        for name, inst in self.instances.items():
            objects = [o for o in (*inst.objects, inst.default_object) if o]
            if name == self.default_instance:
                named.update(objects)
            elif self.instance_folders:
                named.update([name, *(f"{name}/{o}" for o in objects)])
        return sorted(named)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


class BadValue(Exception):
    """A value does not fit; the caller adds the key and, unless secret, the value."""


def describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= 60 else shown[:56] + "...'"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    return "an array" if isinstance(value, list) else type(value).__name__


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- converters: (value, from_env_text) -> typed value, or BadValue ---------------------------

def to_bool(value: object, text: bool) -> bool:
    if text and isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    if isinstance(value, bool):
        return value
    raise BadValue("expected true or false")


def to_int(value: object, text: bool) -> int:
    try:
        number = int(value.strip()) if text and isinstance(value, str) else value
    except ValueError:
        raise BadValue("expected an integer") from None
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    raise BadValue("expected an integer")


def to_float(value: object, text: bool) -> float:
    try:
        number = float(value.strip()) if text and isinstance(value, str) else value
    except ValueError:
        raise BadValue("expected a number") from None
    if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
        return float(number)
    raise BadValue("expected a number")


def to_str(value: object, text: bool) -> str:
    if isinstance(value, str):
        return value
    raise BadValue("expected a string")


def to_path(value: object, text: bool) -> Path:
    raw = str(value) if isinstance(value, PurePath) else to_str(value, text)
    if not raw:
        raise BadValue("must not be empty")
    # Relative paths are taken against the current directory, once, here.
    return Path(os.path.abspath(os.path.expanduser(raw)))


def to_secret(value: object, text: bool) -> Secret:
    return Secret(to_str(value, text))


CONVERTERS: dict[Any, Callable[[object, bool], object]] = {
    bool: to_bool, int: to_int, float: to_float, str: to_str, Path: to_path,
    Secret: to_secret,
}


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a single folder name (or URL path segment), if it cannot."""
    if not name:
        return "must not be empty"
    if "/" in name or "\0" in name or name in (".", ".."):
        return f"must be a single name (no '/', not '.' or '..'), got {describe(name)}"
    return None


# --- an [objects.<name>] table's keys: value -> typed value, or BadValue ----------------

def _obj_metadata(value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadValue("expected a table")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise BadValue("must hold only JSON values (no dates, times, inf or nan)") from None
    return value


def _obj_hub(value: object) -> str:
    hub = to_str(value, False)
    problem = name_problem(hub)
    if problem:
        raise BadValue(problem)
    return hub


def _obj_renames(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise BadValue("expected a table of column names to non-empty strings")
    return dict(value)


def _obj_columns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadValue("expected an array of non-empty strings")
    return tuple(value)


def _obj_rows(value: object) -> int:
    rows = to_int(value, False)
    if rows < 0:
        raise BadValue("must be >= 0 (0: never split)")
    return rows


def _obj_bytes(value: object) -> int:
    limit = to_int(value, False)
    if limit < MIN_MAX_BYTES_PER_JOB:
        raise BadValue(f"must be >= {MIN_MAX_BYTES_PER_JOB} (bytes of one job's upload)")
    return limit


def _obj_partial(value: object) -> str:
    if value not in ("done", "failed"):
        raise BadValue("expected 'done' or 'failed' (where a file with some failed "
                       "records goes)")
    return str(value)


OBJECT_CONVERTERS: dict[str, Callable[[object], object]] = {
    "metadata": _obj_metadata, "hub": _obj_hub, "rename_columns": _obj_renames,
    "drop_columns": _obj_columns, "require_columns": _obj_columns,
    "max_rows_per_job": _obj_rows, "max_bytes_per_job": _obj_bytes,
    "partial": _obj_partial,
}
