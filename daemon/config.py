"""Settings: one frozen, typed object built from layered sources.

Layers, lowest first: built-in defaults, caller defaults (``--sandbox``), the TOML file,
secrets from ``$CREDENTIALS_DIRECTORY`` and ``<VAR>_FILE``, ``BULKDROP_<SECTION>_<KEY>``
variables, caller-forced values. Every error names the key (or the variable) and never
shows a secret.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from daemon.settings import (
    CONVERTERS,
    DEFAULT_INSTANCE,
    NOTIFY_ON,
    OBJECT_CONVERTERS,
    ApiSettings,
    BadValue,
    CallbackSettings,
    ConfigError,
    HttpSettings,
    InstanceSettings,
    LogSettings,
    NotifySettings,
    NotifyTarget,
    ObjectSettings,
    Secret,
    Settings,
    SpoolSettings,
    WorkersSettings,
    describe,
    name_problem,
    split_listen,
    suggest,
)

DEFAULT_CONFIG_PATH = Path("/etc/bulkdrop/bulkdrop.toml")
ENV_PREFIX = "BULKDROP_"


# --- schema, derived from the dataclasses so there is one source of truth --------------

_SECTIONS: dict[str, type] = {
    "api": ApiSettings, "spool": SpoolSettings, "workers": WorkersSettings,
    "callback": CallbackSettings, "http": HttpSettings, "log": LogSettings,
}
_KINDS: dict[str, Any] = {
    f"{section}.{name}": hint
    for section, cls in _SECTIONS.items()
    for name, hint in typing.get_type_hints(cls).items()
}
_SECRETS = [dotted for dotted, kind in _KINDS.items() if kind is Secret]


def _env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


_ENV_NAMES = {_env_name(dotted): dotted for dotted in _KINDS}
_ENV_IGNORED = {ENV_PREFIX + "CONFIG", *(_env_name(dotted) + "_FILE" for dotted in _SECRETS)}


@dataclass(frozen=True)
class _Origin:
    """Where a value came from, so that errors can name it."""

    key: str  # ConfigError.key: the dotted key, or the variable for env values
    name: str  # how the message starts
    where: str = ""  # appended, e.g. " (in /etc/bulkdrop/bulkdrop.toml)"

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.key, f"{self.name}: {problem}{self.where}")


def _from_env(var: str, dotted: str) -> _Origin:
    return _Origin(var, f"{var} ({dotted})")


def _in_file(dotted: str, source: Path | None) -> _Origin:
    return _Origin(dotted, dotted, f" (in {source})" if source else "")


def _convert(kind: Any, value: object, origin: _Origin, *, text: bool = False) -> object:
    try:
        if typing.get_origin(kind) is Literal:
            choice = value.strip().lower() if isinstance(value, str) else value
            if choice not in typing.get_args(kind):
                options = ", ".join(repr(c) for c in typing.get_args(kind))
                raise BadValue(f"expected one of {options}")
            return choice
        return CONVERTERS[kind](value, text)
    except BadValue as bad:
        if kind is Secret:  # never echo anything that might be a secret
            raise origin.error(str(bad)) from None
        raise origin.error(f"{bad}, got {describe(value)}") from None


class _Layers:
    """Flat ``section.key`` values, each with the origin of its last writer."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[str, _Origin] = {}
        self.notify: Mapping[str, Any] = {}  # the file's [notify] table, as read
        for section, cls in _SECTIONS.items():
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    self.values[f"{section}.{f.name}"] = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    self.values[f"{section}.{f.name}"] = f.default_factory()
        self.values["api.base_url"] = ""
        del self.values["spool.state_dir"]  # derived in SpoolSettings unless set

    def set(self, dotted: str, value: object, origin: _Origin, *, text: bool = False) -> None:
        self.values[dotted] = _convert(_KINDS[dotted], value, origin, text=text)
        self.origins[dotted] = origin

    def error(self, dotted: str, problem: str) -> ConfigError:
        return self.origins.get(dotted, _Origin(dotted, dotted)).error(problem)

    def section(self, name: str) -> dict[str, Any]:
        prefix = name + "."
        return {k.removeprefix(prefix): v for k, v in self.values.items() if k.startswith(prefix)}


# --- the layers ---------------------------------------------------------------------

def _apply_mapping(layers: _Layers, mapping: Mapping[str, object]) -> None:
    for dotted, value in mapping.items():
        if dotted not in _KINDS:
            raise ConfigError(dotted, f"{dotted}: unknown setting{suggest(dotted, _KINDS)}")
        layers.set(dotted, value, _Origin(dotted, dotted))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:  # its message carries "(at line L, column C)"
        raise ConfigError(str(path), f"{path}: invalid TOML: {exc}") from None


def _apply_file(layers: _Layers, data: Mapping[str, Any], source: Path
                ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Apply the flat sections; return the raw ``[objects]`` and ``[instances]`` tables."""
    where = f" (in {source})"
    tables: dict[str, Mapping[str, Any]] = {"objects": {}, "instances": {}, "notify": {}}
    for section, table in data.items():
        if section in tables and isinstance(table, dict):
            tables[section] = table
            continue
        if section not in _SECTIONS and section not in tables:
            if not isinstance(table, dict):  # a key outside any section
                owners = [d for d in _KINDS if d.endswith("." + section)]
                hint = f"; did you mean {owners[0]!r}?" if owners else ""
                raise ConfigError(section, f"{section}: key outside any section{hint}{where}")
            hint = suggest(section, [*_SECTIONS, *tables])
            raise ConfigError(section, f"[{section}]: unknown section{hint}{where}")
        if not isinstance(table, dict):
            raise ConfigError(section, f"{section}: expected a [{section}] table{where}")
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if dotted not in _KINDS:
                keys = [d.split(".", 1)[1] for d in _KINDS if d.startswith(section + ".")]
                hint = suggest(key, keys)
                raise ConfigError(dotted, f"{dotted}: unknown key{hint}{where}")
            layers.set(dotted, value, _in_file(dotted, source))
    layers.notify = tables["notify"]
    return tables["objects"], tables["instances"]


def _read_secret(path: Path, origin: _Origin) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise origin.error(f"cannot read secret file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise origin.error(f"secret file {str(path)!r} is not UTF-8 text") from None
    # Exactly one trailing newline, as `echo secret > file` writes it.
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text


def _apply_secret_files(layers: _Layers, env: Mapping[str, str]) -> None:
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    for dotted in _SECRETS:
        if credentials:  # systemd LoadCredential=: a file named after the key
            path = Path(credentials) / dotted.split(".", 1)[1]
            if path.exists():
                origin = _Origin(dotted, dotted, f" (credential {path})")
                layers.set(dotted, _read_secret(path, origin), origin)
        var = _env_name(dotted) + "_FILE"
        if env.get(var):
            origin = _from_env(var, dotted)
            layers.set(dotted, _read_secret(Path(env[var]), origin), origin)


def _apply_env(layers: _Layers, env: Mapping[str, str]) -> None:
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in _ENV_IGNORED:
            continue
        dotted = _ENV_NAMES.get(var)
        if dotted is None:
            if var.startswith((INSTANCES_ENV_PREFIX, ENV_PREFIX + "NOTIFY_")):
                continue  # an instance's or a target's secret: read with it
            if var.startswith(ENV_PREFIX + "OBJECTS_"):
                raise ConfigError(var, f"{var}: objects are configured in the TOML file only, "
                                       "as [objects.<name>] tables")
            hint = suggest(var, [*_ENV_NAMES, *_ENV_IGNORED])
            raise ConfigError(var, f"{var}: unknown setting{hint}")
        layers.set(dotted, env[var], _from_env(var, dotted), text=True)
    # watchfiles' own switch, read the way watchfiles reads it.
    polling = env.get("WATCHFILES_FORCE_POLLING", "").strip().lower()
    if polling and polling not in {"false", "disable", "disabled"}:
        origin = _from_env("WATCHFILES_FORCE_POLLING", "spool.force_polling")
        layers.set("spool.force_polling", True, origin)


# --- validation ---------------------------------------------------------------------

# key -> (bound, bound itself allowed)
_LIMITS: dict[str, tuple[int, bool]] = {
    "api.request_timeout_seconds": (0, False), "api.retry_deadline_seconds": (0, False),
    "api.requests_per_second": (0, True),
    "spool.settle_seconds": (0, True), "spool.rescan_seconds": (0, False),
    "spool.max_line_length": (1024, True), "spool.ledger_retention_days": (0, True),
    "workers.uploads": (1, True), "workers.max_active_jobs": (1, True),
    "workers.poll_interval_seconds": (0, False), "workers.poll_max_interval_seconds": (0, False),
    "workers.job_timeout_seconds": (0, False), "workers.shutdown_grace_seconds": (0, True),
}


def _check_url(layers: _Layers, dotted: str, *, required: bool) -> None:
    url = layers.values[dotted]
    if not url:
        if required:
            where = f"set it in the config file or {_env_name(dotted)}"
            raise layers.error(dotted, f"required; {where}")
        return
    if not _is_url(url):
        raise layers.error(dotted, f"expected an http:// or https:// URL, got {describe(url)}")


def _idna_ok(url: str) -> bool:
    """Can the URL's host be looked up at all (``hooks..example.com`` cannot)?"""
    try:
        (urlsplit(url).hostname or "").encode("idna")
    except UnicodeError:
        return False
    return True


def _is_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _validate(layers: _Layers, require_base_url: bool) -> None:
    values = layers.values
    _check_url(layers, "api.base_url", required=require_base_url)
    values["api.base_url"] = values["api.base_url"].rstrip("/")
    _check_url(layers, "callback.public_url", required=False)
    for dotted, (bound, inclusive) in _LIMITS.items():
        value = values[dotted]
        if value < bound or (value == bound and not inclusive):
            relation = ">=" if inclusive else ">"
            raise layers.error(dotted, f"must be {relation} {bound}, got {value!r}")
    first, most = "workers.poll_interval_seconds", "workers.poll_max_interval_seconds"
    low, high = values[first], values[most]
    if high < low:
        if most in layers.origins:  # blame the one the user set
            raise layers.error(most, f"must be >= {first} ({low!r}), got {high!r}")
        raise layers.error(first, f"must be <= {most} ({high!r}), got {low!r}")
    for dotted in ("api.hub", "spool.node_id", "spool.default_object",
                   "spool.default_instance"):
        problem = name_problem(values[dotted])
        if problem and not (dotted.startswith("spool.default_") and values[dotted] == ""):
            raise layers.error(dotted, problem)
    listen = values["http.listen"]
    try:
        split_listen(listen) if listen else None
    except ValueError:
        raise layers.error("http.listen", "expected 'host:port' (e.g. '127.0.0.1:8470' or "
                           f"'[::1]:8470'), or '' to disable, got {describe(listen)}") from None


# --- objects (file only) ------------------------------------------------------------

def _object_keys(name: str, table: object, source: Path | None,
                 prefix: str = "objects") -> dict[str, Any]:
    """The keys an ``[<prefix>.<name>]`` table sets, converted."""
    here = _in_file(f"{prefix}.{name}", source)
    problem = name_problem(name)
    if problem:
        raise here.error(f"object name {problem}")
    if not isinstance(table, dict):
        raise here.error(f"expected an [{prefix}.{name}] table, got {describe(table)}")
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        origin = _in_file(f"{prefix}.{name}.{key}", source)
        if key not in OBJECT_CONVERTERS:
            raise origin.error(f"unknown key{suggest(key, OBJECT_CONVERTERS)}")
        try:
            kwargs[key] = OBJECT_CONVERTERS[key](value)
        except BadValue as bad:
            raise origin.error(f"{bad}, got {describe(value)}") from None
    return kwargs


def _object(name: str, table: object, source: Path | None) -> ObjectSettings:
    return ObjectSettings(**_object_keys(name, table, source))


# --- instances (file; their secrets also from the environment and credentials) -------

INSTANCES_ENV_PREFIX = ENV_PREFIX + "INSTANCES_"
INSTANCE_NAME = re.compile(r"[a-z0-9_-]+")
_INSTANCE_SECRETS = ("user_secret", "organization_secret", "element_token")
# key -> (kind, the [api]/[workers] key it falls back to)
_INSTANCE_KEYS: dict[str, tuple[Any, str]] = {
    "base_url": (str, "api.base_url"), "hub": (str, "api.hub"),
    **{key: (Secret, "") for key in _INSTANCE_SECRETS},
    "uploads": (int, "workers.uploads"), "max_active_jobs": (int, "workers.max_active_jobs"),
    "requests_per_second": (int, "api.requests_per_second"),
    "default_object": (str, "spool.default_object"),
}


def _instance_env(name: str, key: str) -> str:
    return f"{INSTANCES_ENV_PREFIX}{name.upper().replace('-', '_')}_{key.upper()}"


def _instance(layers: _Layers, name: str, table: object, shared: Mapping[str, Any],
              source: Path | None, env: Mapping[str, str], require_base_url: bool
              ) -> InstanceSettings:
    # (*env* is empty for instances given by the caller: the sandbox's take no secrets.)
    """``[instances.<name>]``: its keys over [api]'s and [workers]', its secrets from the
    file, then ``$CREDENTIALS_DIRECTORY/<name>.<key>``, ``..._FILE``, the variable."""
    here = _in_file(f"instances.{name}", source)
    if not INSTANCE_NAME.fullmatch(name):
        raise here.error(f"an instance name is lower-case letters, digits, '_' and '-', "
                         f"got {describe(name)}")
    if not isinstance(table, dict):
        raise here.error(f"expected an [instances.{name}] table, got {describe(table)}")
    values: dict[str, Any] = {key: layers.values[fallback] if fallback else Secret()
                              for key, (_kind, fallback) in _INSTANCE_KEYS.items()}
    objects = table.get("objects", {})
    for key, value in table.items():
        dotted = f"instances.{name}.{key}"
        if key == "objects":
            continue
        if key not in _INSTANCE_KEYS:
            hint = suggest(key, [*_INSTANCE_KEYS, "objects"])
            raise ConfigError(dotted, f"{dotted}: unknown key{hint}"
                              + (f" (in {source})" if source else ""))
        values[key] = _convert(_INSTANCE_KEYS[key][0], value, _in_file(dotted, source))
        layers.origins[dotted] = _in_file(dotted, source)
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    for key in _INSTANCE_SECRETS:
        dotted, var = f"instances.{name}.{key}", _instance_env(name, key)
        if credentials and (path := Path(credentials) / f"{name}.{key}").exists():
            origin = _Origin(dotted, dotted, f" (credential {path})")
            values[key] = Secret(_read_secret(path, origin))
            layers.origins[dotted] = origin
        if env.get(var + "_FILE"):
            origin = _from_env(var + "_FILE", dotted)
            values[key] = Secret(_read_secret(Path(env[var + "_FILE"]), origin))
            layers.origins[dotted] = origin
        if var in env:
            values[key] = Secret(env[var])
            layers.origins[dotted] = _from_env(var, dotted)
    _check_instance(layers, name, values, require_base_url)
    if not isinstance(objects, dict):
        raise _in_file(f"instances.{name}.objects", source).error(
            f"expected [instances.{name}.objects.<object>] tables, got {describe(objects)}")
    # An instance with a hub of its own keeps it: a shared object's hub was written for
    # [api]'s (its own objects table may name one).
    own_hub = "hub" in table
    merged = {obj: dataclasses.replace(conf, hub=None) if own_hub else conf
              for obj, conf in shared.items()}
    for obj, obj_table in objects.items():
        keys = _object_keys(obj, obj_table, source, f"instances.{name}.objects")
        base = merged.get(obj)
        merged[obj] = dataclasses.replace(base, **keys) if base else ObjectSettings(**keys)
    api = ApiSettings(
        base_url=values["base_url"].rstrip("/"), hub=values["hub"],
        **{key: values[key] for key in _INSTANCE_SECRETS},
        request_timeout_seconds=layers.values["api.request_timeout_seconds"],
        retry_deadline_seconds=layers.values["api.retry_deadline_seconds"],
        requests_per_second=values["requests_per_second"])
    return InstanceSettings(name, api, values["uploads"], values["max_active_jobs"],
                            values["default_object"], merged)


def _check_instance(layers: _Layers, name: str, values: dict[str, Any],
                    require_base_url: bool) -> None:
    def error(key: str, problem: str) -> ConfigError:
        dotted = f"instances.{name}.{key}"
        return layers.origins.get(dotted, _Origin(dotted, dotted)).error(problem)

    url = values["base_url"]
    if not url and require_base_url:
        raise error("base_url", "required (or [api] base_url, which instances share)")
    if url and not _is_url(url):
        raise error("base_url", f"expected an http:// or https:// URL, got {describe(url)}")
    for key, bound in (("uploads", 1), ("max_active_jobs", 1), ("requests_per_second", 0)):
        if values[key] < bound:
            raise error(key, f"must be >= {bound}, got {values[key]!r}")
    for key in ("hub", "default_object"):
        problem = name_problem(values[key])
        if problem and not (key == "default_object" and values[key] == ""):
            raise error(key, problem)


def _instances(layers: _Layers, raw: Mapping[str, Any], shared: Mapping[str, ObjectSettings],
               source: Path | None, env: Mapping[str, str], require_base_url: bool,
               secrets_from_env: bool = True
               ) -> tuple[dict[str, InstanceSettings], str | None]:
    """Every instance, and the default one (None: files must name theirs). Instances the
    caller gives (the sandbox's) take no secrets from the environment or credentials."""
    api_is_one = not raw or bool(layers.values["api.element_token"])
    if api_is_one and DEFAULT_INSTANCE in raw:
        raise _in_file(f"instances.{DEFAULT_INSTANCE}", source).error(
            f"'{DEFAULT_INSTANCE}' is [api]'s name as an instance (it has an element_token): "
            "name this instance otherwise, or take element_token out of [api]")
    instances: dict[str, InstanceSettings] = {}
    if api_is_one:
        if raw:  # [api] serves files too: it needs its URL like any instance
            _check_url(layers, "api.base_url", required=require_base_url)
        w = layers.values
        instances[DEFAULT_INSTANCE] = InstanceSettings(
            DEFAULT_INSTANCE, ApiSettings(**layers.section("api")), w["workers.uploads"],
            w["workers.max_active_jobs"], w["spool.default_object"], dict(shared))
    env_names: dict[str, str] = {}
    objects = {*shared, layers.values["spool.default_object"]} - {""}
    for name, table in raw.items():
        var = _instance_env(name, "")
        if var in env_names:
            raise _in_file(f"instances.{name}", source).error(
                f"its variables ({var}...) would be those of [instances.{env_names[var]}] too: "
                "rename one")
        if name in objects:
            raise _in_file(f"instances.{name}", source).error(
                f"{name!r} is an object too ([objects.{name}] or [spool] default_object): "
                f"inbox/{name}/ would go to the instance; name the instance otherwise")
        env_names[var] = name
        instances[name] = _instance(layers, name, table, shared, source,
                                    env if secrets_from_env else {}, require_base_url)
    expected = {_instance_env(name, key) + tail for name in raw
                for key in _INSTANCE_SECRETS for tail in ("", "_FILE")}
    for var in sorted(env) if secrets_from_env else ():
        if var.startswith(INSTANCES_ENV_PREFIX) and var not in expected:
            hint = suggest(var, expected)
            raise ConfigError(var, f"{var}: no such instance secret{hint} (instances are "
                                   "configured in the TOML file, as [instances.<name>] tables; "
                                   "their secrets may come from "
                                   "BULKDROP_INSTANCES_<NAME>_<KEY>)")
    chosen = layers.values["spool.default_instance"]
    if chosen and chosen not in instances:
        raise layers.error("spool.default_instance", (
            f"no instance {chosen!r} (instances: {', '.join(sorted(instances))})"
            f"{suggest(chosen, instances)}"))
    if not chosen:
        chosen = (next(iter(instances)) if len(instances) == 1 else
                  DEFAULT_INSTANCE if api_is_one else None)
    return instances, chosen or None


# --- notifications (file; their signature keys also from the environment) -------------

_NOTIFY_KEYS = {"name", "url", "on", "format", "signature_key", "instances", "objects"}


def _notify(layers: _Layers, source: Path | None, env: Mapping[str, str],
            instances: Mapping[str, InstanceSettings]) -> NotifySettings:
    """``[notify] retry_deadline_seconds`` and its ``[[notify.targets]]``."""
    raw = dict(layers.notify)
    deadline = 86400.0
    if "retry_deadline_seconds" in raw:
        origin = _in_file("notify.retry_deadline_seconds", source)
        deadline = float(_convert(float, raw.pop("retry_deadline_seconds"), origin))  # type: ignore[arg-type]
        if not 0 < deadline <= 10 * 365 * 86400:
            raise origin.error(f"must be > 0 and at most ten years, got {deadline!r}")
    tables = raw.pop("targets", [])
    for key in raw:
        raise _in_file(f"notify.{key}", source).error(
            f"unknown key{suggest(key, ['retry_deadline_seconds', 'targets'])}")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _in_file("notify.targets", source).error(
            "expected [[notify.targets]] tables, one per target")
    targets: list[NotifyTarget] = []
    for index, table in enumerate(tables, 1):
        if len(tables) > 1 and "name" not in table:  # rows in the ledger name their target
            raise _in_file(f"notify.targets[{index}].name", source).error(
                "required with several targets (what is pending keeps going to it)")
        targets.append(_target(index, table, source, env, instances))
    names = [t.name for t in targets]
    variables = [n.upper().replace("-", "_") for n in names]
    for name, variable in zip(names, variables, strict=True):
        if names.count(name) > 1:
            raise _in_file("notify.targets", source).error(f"two targets are named {name!r}")
        if variables.count(variable) > 1:
            raise _in_file("notify.targets", source).error(
                f"two targets' variables would be BULKDROP_NOTIFY_{variable}_...: rename one")
    expected = {f"{ENV_PREFIX}NOTIFY_{n.upper().replace('-', '_')}_SIGNATURE_KEY{tail}"
                for n in names for tail in ("", "_FILE")}
    for var in sorted(env):
        if var.startswith(ENV_PREFIX + "NOTIFY_") and var not in expected:
            raise ConfigError(var, f"{var}: no such target's signature key"
                                   f"{suggest(var, expected)} (targets: {', '.join(names)})")
    return NotifySettings(deadline, tuple(targets))


def _target(index: int, table: Mapping[str, Any], source: Path | None,
            env: Mapping[str, str], instances: Mapping[str, InstanceSettings]) -> NotifyTarget:
    where = f"notify.targets[{index}]"
    for key in table:
        if key not in _NOTIFY_KEYS:
            raise _in_file(f"{where}.{key}", source).error(
                f"unknown key{suggest(key, _NOTIFY_KEYS)}")
    name = table.get("name", str(index))
    if not isinstance(name, str) or not INSTANCE_NAME.fullmatch(name):
        raise _in_file(f"{where}.name", source).error(
            f"a name of a-z, 0-9, '_' and '-', got {describe(name)}")
    url = table.get("url", "")
    if not isinstance(url, str) or not _is_url(url) or not _idna_ok(url):
        raise _in_file(f"{where}.url", source).error(
            f"required: an http:// or https:// URL, got {describe(url)}")
    on = table.get("on", ["FAILED", "REJECTED", "partial"])
    if not isinstance(on, list) or not on or not set(on) <= set(NOTIFY_ON):
        raise _in_file(f"{where}.on", source).error(
            f"expected a list of {', '.join(NOTIFY_ON)}, got {describe(on)}")
    fmt = table.get("format", "json")
    if fmt not in ("json", "slack"):
        raise _in_file(f"{where}.format", source).error(
            f"expected 'json' or 'slack', got {describe(fmt)}")
    filters: dict[str, tuple[str, ...]] = {}
    for key in ("instances", "objects"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _in_file(f"{where}.{key}", source).error(
                f"expected a list of names, got {describe(value)}")
        unknown = [v for v in value if key == "instances" and v not in instances]
        if unknown:
            raise _in_file(f"{where}.{key}", source).error(
                f"no instance {unknown[0]!r} (instances: {', '.join(instances)})")
        filters[key] = tuple(value)
    secret = _target_secret(name, where, table, source, env)
    return NotifyTarget(name, url, tuple(on), fmt, secret,  # type: ignore[arg-type]
                        filters["instances"], filters["objects"])


def _target_secret(name: str, where: str, table: Mapping[str, Any], source: Path | None,
                   env: Mapping[str, str]) -> Secret:
    """A target's signature key: the file, ``$CREDENTIALS_DIRECTORY/notify-<name>.
    signature_key``, ``BULKDROP_NOTIFY_<NAME>_SIGNATURE_KEY_FILE``, the variable."""
    secret = _convert(Secret, table.get("signature_key", ""),
                      _in_file(f"{where}.signature_key", source))
    var = f"{ENV_PREFIX}NOTIFY_{name.upper().replace('-', '_')}_SIGNATURE_KEY"
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    if credentials and (path := Path(credentials) / f"notify-{name}.signature_key").exists():
        secret = Secret(_read_secret(path, _Origin(var, f"{where}.signature_key",
                                                   f" (credential {path})")))
    if env.get(var + "_FILE"):
        secret = Secret(_read_secret(Path(env[var + "_FILE"]), _from_env(var + "_FILE", where)))
    if var in env:
        secret = Secret(env[var])
    assert isinstance(secret, Secret)
    return secret


# --- public entry points ------------------------------------------------------------

def find_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path | None:
    """``--config PATH``, else ``$BULKDROP_CONFIG``, else the system file if present."""
    if cli_path:
        return Path(cli_path).expanduser()
    if env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"]).expanduser()
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_settings(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, object] | None = None,
    forced: Mapping[str, object] | None = None,
    require_base_url: bool = True,
    instances: Mapping[str, Mapping[str, object]] | None = None,
    notify: Mapping[str, object] | None = None,
) -> Settings:
    """Build the settings from every layer; raise ConfigError naming the key at fault.
    *instances* and *notify*, when given, are the instance tables and the [notify] table,
    whatever the file says (the sandbox's)."""
    env = os.environ if env is None else env
    layers = _Layers()
    _apply_mapping(layers, defaults or {})
    objects: Mapping[str, Any] = {}
    raw_instances: Mapping[str, Any] = {}
    source = Path(os.path.abspath(path)) if path is not None else None
    if source is not None:
        objects, raw_instances = _apply_file(layers, _read_toml(source), source)
    _apply_secret_files(layers, env)
    _apply_env(layers, env)
    _apply_mapping(layers, forced or {})
    if instances is not None:
        raw_instances = instances
    _validate(layers, require_base_url and not raw_instances)
    shared = {name: _object(name, table, source) for name, table in objects.items()}
    configured, default = _instances(layers, raw_instances, shared,
                                     source if instances is None else None, env,
                                     require_base_url, secrets_from_env=instances is None)
    if notify is not None:
        layers.notify = notify
    notified = _notify(layers, source if notify is None else None,
                       env if notify is None else {}, configured)
    return Settings(
        api=ApiSettings(**layers.section("api")),
        spool=SpoolSettings(**layers.section("spool")),
        workers=WorkersSettings(**layers.section("workers")),
        objects=shared,
        callback=CallbackSettings(**layers.section("callback")),
        http=HttpSettings(**layers.section("http")),
        log=LogSettings(**layers.section("log")),
        source=source,
        origins={dotted: _describe(origin) for dotted, origin in layers.origins.items()},
        instances=configured,
        default_instance=default,
        instance_folders=bool(raw_instances),
        notify=notified,
    )


def _describe(origin: _Origin) -> str:
    if origin.where.startswith(" (in "):
        return "file"
    if origin.where.startswith(" (credential "):
        return "credential " + origin.where.removeprefix(" (credential ").removesuffix(")")
    if origin.key.startswith((ENV_PREFIX, "WATCHFILES_")):
        return "env " + origin.key
    return "command"
