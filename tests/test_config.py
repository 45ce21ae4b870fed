"""Settings: layers, types, secrets, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest

from daemon import config
from daemon.config import find_config_path, load_settings
from daemon.settings import (
    ApiSettings,
    CallbackSettings,
    ConfigError,
    HttpSettings,
    LogSettings,
    ObjectSettings,
    Secret,
    Settings,
    SpoolSettings,
    WorkersSettings,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "bulkdrop.toml"
URL = "https://oc.example.com/elements/api-v2"
SECRET = "hunter2-very-secret"


@pytest.fixture
def toml(tmp_path: Path):
    """Write a config file and return its path."""

    def write(text: str, base_url: str | None = URL) -> Path:
        if base_url is not None:
            text = f'[api]\nbase_url = "{base_url}"\n' + text.replace("[api]\n", "")
        path = tmp_path / "bulkdrop.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def error_for(path: Path | None, env: dict[str, str] | None = None, **kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {}, **kw)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return info.value


# --- defaults and layers -------------------------------------------------------------

def test_defaults() -> None:
    s = load_settings(None, {}, require_base_url=False)
    assert s.api == ApiSettings(base_url="")
    assert s.api.hub == "marketing" and not s.api.user_secret
    assert (s.api.request_timeout_seconds, s.api.retry_deadline_seconds) == (300, 86400)
    assert s.spool.root == Path("/var/spool/bulkdrop")
    assert s.spool.node_id == socket.gethostname()
    assert s.spool.state_dir == Path("/var/spool/bulkdrop/.state") / socket.gethostname()
    assert (s.spool.default_object, s.spool.settle_seconds, s.spool.rescan_seconds) == ("", 1, 30)
    assert s.spool.force_polling is False
    assert s.workers == WorkersSettings()
    assert (s.workers.uploads, s.workers.max_active_jobs) == (4, 32)
    assert s.objects == {} and s.source is None
    assert s.callback == CallbackSettings() and s.http.listen == "127.0.0.1:8470"
    assert (s.log.format, s.log.level) == ("auto", "info")
    assert s.object_settings("contact") == ObjectSettings()
    assert s.hub_for("contact") == "marketing"


def test_file_values_and_types(toml) -> None:
    path = toml(
        '[api]\nhub = "crm"\nrequest_timeout_seconds = 12\n'
        '[spool]\nroot = "/srv/spool"\nnode_id = "n1"\nsettle_seconds = 0\nforce_polling = true\n'
        '[workers]\nuploads = 2\npoll_interval_seconds = 1\n'
        '[http]\nlisten = "[::1]:9000"\n[log]\nformat = "JSON"\nlevel = "debug"\n',
        base_url=URL + "/",
    )
    s = load_settings(path, {})
    assert s.source == path
    assert s.api.base_url == URL  # trailing slash stripped
    assert s.api.hub == "crm"
    assert s.api.request_timeout_seconds == 12.0
    assert isinstance(s.api.request_timeout_seconds, float)
    assert s.spool.state_dir == Path("/srv/spool/.state/n1")
    assert s.spool.settle_seconds == 0 and s.spool.force_polling is True
    assert s.workers.uploads == 2 and s.workers.poll_interval_seconds == 1.0
    assert (s.http.host, s.http.port) == ("::1", 9000)
    assert (s.log.format, s.log.level) == ("json", "debug")


def test_precedence_defaults_file_env_forced(toml) -> None:
    key = "spool.default_object"
    assert load_settings(None, {}, defaults={key: "a"}, require_base_url=False).spool \
        .default_object == "a"
    path = toml('[spool]\ndefault_object = "b"\n')
    assert load_settings(path, {}, defaults={key: "a"}).spool.default_object == "b"
    env = {"BULKDROP_SPOOL_DEFAULT_OBJECT": "c"}
    assert load_settings(path, env, defaults={key: "a"}).spool.default_object == "c"
    s = load_settings(path, env, defaults={key: "a"}, forced={key: "d", "api.base_url": URL})
    assert s.spool.default_object == "d"


def test_env_overrides_and_parses_strings(toml) -> None:
    env = {
        "BULKDROP_API_BASE_URL": "http://localhost:8080/elements/api-v2",
        "BULKDROP_WORKERS_UPLOADS": " 7 ",
        "BULKDROP_SPOOL_SETTLE_SECONDS": "2.5",
        "BULKDROP_SPOOL_FORCE_POLLING": "Yes",
        "BULKDROP_LOG_LEVEL": "WARNING",
        "BULKDROP_HTTP_LISTEN": "",
        "BULKDROP_CONFIG": "/ignored/here",
        "UNRELATED": "x",
    }
    s = load_settings(toml("[workers]\nuploads = 3\n"), env)
    assert s.api.base_url == "http://localhost:8080/elements/api-v2"
    assert s.workers.uploads == 7 and s.spool.settle_seconds == 2.5
    assert s.spool.force_polling is True and s.log.level == "warning"
    assert not s.http.enabled and (s.http.host, s.http.port) == ("", 0)


@pytest.mark.parametrize(("word", "value"), [
    ("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True), ("no", False),
    ("On", True), ("off", False),
])
def test_env_bool_words(word: str, value: bool) -> None:
    env = {"BULKDROP_SPOOL_FORCE_POLLING": word}
    assert load_settings(None, env, require_base_url=False).spool.force_polling is value


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("false", False), ("", False)])
def test_watchfiles_force_polling(value: str, expected: bool) -> None:
    env = {"WATCHFILES_FORCE_POLLING": value}
    assert load_settings(None, env, require_base_url=False).spool.force_polling is expected


def test_relative_paths_resolve_against_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {"BULKDROP_SPOOL_STATE_DIR": "state"},
                      defaults={"spool.root": "./spool"}, require_base_url=False)
    assert s.spool.root == tmp_path / "spool"
    assert s.spool.state_dir == tmp_path / "state"


def test_http_listen_forms() -> None:
    assert (HttpSettings("0.0.0.0:0").host, HttpSettings("0.0.0.0:0").port) == ("0.0.0.0", 0)
    assert HttpSettings("[::]:8470").host == "::"
    for bad in ("8470", "localhost", "::1:8470", "[::1]8470", "h:99999", "h:port", ":80"):
        err = error_for(None, {"BULKDROP_HTTP_LISTEN": bad}, require_base_url=False)
        assert err.key == "BULKDROP_HTTP_LISTEN" and "http.listen" in str(err)


def test_objects(toml) -> None:
    path = toml(
        '[objects.contact]\nmetadata = { identifierFieldName = "email", action = "upsert" }\n'
        'rename_columns = { C_EmailAddress = "email" }\ndrop_columns = ["x"]\n'
        'require_columns = ["email"]\nmax_rows_per_job = 1000\n'
        '[objects.account]\nhub = "crm"\n'
    )
    s = load_settings(path, {})
    contact = s.object_settings("contact")
    assert contact.metadata == {"identifierFieldName": "email", "action": "upsert"}
    assert contact.rename_columns == {"C_EmailAddress": "email"}
    assert contact.drop_columns == ("x",) and contact.require_columns == ("email",)
    assert contact.max_rows_per_job == 1000
    assert s.hub_for("contact") == "marketing" and s.hub_for("account") == "crm"
    assert s.object_settings("unconfigured") == ObjectSettings()


# --- errors that name the key ----------------------------------------------------------

def test_missing_base_url() -> None:
    err = error_for(None, {})
    assert err.key == "api.base_url" and "required" in str(err)
    assert "BULKDROP_API_BASE_URL" in str(err)


@pytest.mark.parametrize("url", ["ftp://x/y", "api.example.com", "https://", "http:///path"])
def test_bad_base_url(url: str) -> None:
    err = error_for(None, {"BULKDROP_API_BASE_URL": url})
    assert err.key == "BULKDROP_API_BASE_URL" and "api.base_url" in str(err)


def test_unknown_section(toml) -> None:
    err = error_for(toml("[spol]\nroot = '/x'\n"))
    assert err.key == "spol" and "unknown section" in str(err) and "'spool'" in str(err)


def test_key_outside_section(toml) -> None:
    err = error_for(toml(f"hub = 'crm'\n[api]\nbase_url = '{URL}'\n", base_url=None))
    assert err.key == "hub" and "outside any section" in str(err) and "'api.hub'" in str(err)
    err = error_for(toml(f"spool = 'x'\n[api]\nbase_url = '{URL}'\n", base_url=None))
    assert err.key == "spool" and "[spool]" in str(err)


def test_unknown_key(toml) -> None:
    path = toml("[spool]\nsettle_second = 2\n")
    err = error_for(path)
    assert err.key == "spool.settle_second"
    assert "unknown key" in str(err) and "'settle_seconds'" in str(err) and str(path) in str(err)


def test_unknown_object_key(toml) -> None:
    err = error_for(toml("[objects.contact]\nmeta_data = {}\n"))
    assert err.key == "objects.contact.meta_data" and "'metadata'" in str(err)


def test_unknown_env_var() -> None:
    err = error_for(None, {"BULKDROP_WORKERS_UPLOAD": "3"})
    assert err.key == "BULKDROP_WORKERS_UPLOAD" and "BULKDROP_WORKERS_UPLOADS" in str(err)


def test_objects_env_var_points_to_file() -> None:
    err = error_for(None, {"BULKDROP_OBJECTS_CONTACT_HUB": "crm"})
    assert err.key == "BULKDROP_OBJECTS_CONTACT_HUB" and "TOML file only" in str(err)


def test_non_secret_file_variable_is_unknown() -> None:
    err = error_for(None, {"BULKDROP_SPOOL_ROOT_FILE": "/x"})
    assert err.key == "BULKDROP_SPOOL_ROOT_FILE"


def test_wrong_type_in_file(toml) -> None:
    err = error_for(toml('[spool]\nsettle_seconds = "soon"\n'))
    assert err.key == "spool.settle_seconds"
    assert str(err).startswith("spool.settle_seconds: expected a number, got 'soon'")


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[workers]\nuploads = true\n", "workers.uploads", "expected an integer, got true"),
    ("[workers]\nuploads = 2.5\n", "workers.uploads", "expected an integer, got 2.5"),
    ("[spool]\nforce_polling = 1\n", "spool.force_polling", "expected true or false, got 1"),
    ("[spool]\nroot = 5\n", "spool.root", "expected a string, got 5"),
    ("[spool]\nsettle_seconds = nan\n", "spool.settle_seconds", "expected a number"),
    ("[log]\nlevel = 'loud'\n", "log.level", "expected one of 'debug', 'info'"),
    ("[api]\nhub = ['a']\n", "api.hub", "expected a string, got an array"),
])
def test_more_wrong_types_in_file(toml, text: str, key: str, problem: str) -> None:
    err = error_for(toml(text))
    assert err.key == key and problem in str(err)


def test_wrong_type_in_env() -> None:
    err = error_for(None, {"BULKDROP_SPOOL_SETTLE_SECONDS": "soon"}, require_base_url=False)
    assert err.key == "BULKDROP_SPOOL_SETTLE_SECONDS"
    assert str(err) == ("BULKDROP_SPOOL_SETTLE_SECONDS (spool.settle_seconds): "
                        "expected a number, got 'soon'")
    err = error_for(None, {"BULKDROP_WORKERS_UPLOADS": "4.0"}, require_base_url=False)
    assert err.key == "BULKDROP_WORKERS_UPLOADS" and "expected an integer" in str(err)
    err = error_for(None, {"BULKDROP_SPOOL_FORCE_POLLING": "maybe"}, require_base_url=False)
    assert "spool.force_polling" in str(err) and "'maybe'" in str(err)


def test_bad_poll_ordering(toml) -> None:
    err = error_for(toml("[workers]\npoll_interval_seconds = 10\npoll_max_interval_seconds = 5\n"))
    assert err.key == "workers.poll_max_interval_seconds"
    assert "workers.poll_interval_seconds" in str(err)
    err = error_for(None, {"BULKDROP_WORKERS_POLL_INTERVAL_SECONDS": "61"}, require_base_url=False)
    assert err.key == "BULKDROP_WORKERS_POLL_INTERVAL_SECONDS"
    assert "must be <= workers.poll_max_interval_seconds (60.0), got 61.0" in str(err)


@pytest.mark.parametrize(("var", "value"), [
    ("BULKDROP_WORKERS_UPLOADS", "0"), ("BULKDROP_WORKERS_MAX_ACTIVE_JOBS", "0"),
    ("BULKDROP_WORKERS_POLL_INTERVAL_SECONDS", "0"), ("BULKDROP_SPOOL_SETTLE_SECONDS", "-1"),
    ("BULKDROP_API_REQUEST_TIMEOUT_SECONDS", "0"), ("BULKDROP_SPOOL_RESCAN_SECONDS", "0"),
    ("BULKDROP_SPOOL_NODE_ID", "a/b"), ("BULKDROP_SPOOL_NODE_ID", ".."),
    ("BULKDROP_SPOOL_NODE_ID", ""), ("BULKDROP_SPOOL_DEFAULT_OBJECT", "x/y"),
    ("BULKDROP_API_HUB", ""), ("BULKDROP_SPOOL_ROOT", ""),
    ("BULKDROP_CALLBACK_PUBLIC_URL", "not a url"),
])
def test_out_of_range_values(var: str, value: str) -> None:
    err = error_for(None, {var: value}, require_base_url=False)
    assert err.key == var and config._ENV_NAMES[var] in str(err)


@pytest.mark.parametrize(("text", "key"), [
    ('[objects."a/b"]\nhub = "x"\n', "objects.a/b"),
    ("[objects]\ncontact = 1\n", "objects.contact"),
    ("[objects.contact]\nmetadata = 'email'\n", "objects.contact.metadata"),
    ("[objects.contact]\nmetadata = { at = 2024-01-01 }\n", "objects.contact.metadata"),
    ("[objects.contact]\nhub = ''\n", "objects.contact.hub"),
    ("[objects.contact]\nrename_columns = { a = 1 }\n", "objects.contact.rename_columns"),
    ("[objects.contact]\ndrop_columns = 'a'\n", "objects.contact.drop_columns"),
    ("[objects.contact]\nrequire_columns = [1]\n", "objects.contact.require_columns"),
    ("[objects.contact]\nmax_rows_per_job = -1\n", "objects.contact.max_rows_per_job"),
])
def test_bad_objects(toml, text: str, key: str) -> None:
    err = error_for(toml(text))
    assert err.key == key and str(err).startswith(key + ":")


def test_toml_syntax_error(toml) -> None:
    path = toml("[spool]\nroot = \n")
    err = error_for(path)
    assert err.key == str(path) and "line 4" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = error_for(path)
    assert err.key == str(path) and "not found" in str(err)


def test_unknown_caller_key() -> None:
    err = error_for(None, {}, forced={"api.baseurl": URL})
    assert err.key == "api.baseurl" and "'api.base_url'" in str(err)


# --- secrets ---------------------------------------------------------------------------

def test_secret_masks_itself() -> None:
    secret = Secret(SECRET)
    assert secret.reveal() == SECRET and secret
    assert str(secret) == "***" and repr(secret) == "Secret('***')"
    assert repr(Secret("")) == "Secret('')" and not Secret("")
    assert f"{secret}" == "***" and SECRET not in repr([secret])


def test_secret_from_file_variable(tmp_path: Path) -> None:
    (tmp_path / "user").write_text(SECRET + "\n\n")
    (tmp_path / "sig").write_bytes(b"k\r\n")
    env = {"BULKDROP_API_USER_SECRET_FILE": str(tmp_path / "user"),
           "BULKDROP_CALLBACK_SIGNATURE_KEY_FILE": str(tmp_path / "sig")}
    s = load_settings(None, env, require_base_url=False)
    assert s.api.user_secret.reveal() == SECRET + "\n"  # exactly one newline stripped
    assert s.callback.signature_key.reveal() == "k"


def test_secret_from_credentials_directory(tmp_path: Path) -> None:
    for name in ("user_secret", "organization_secret", "element_token", "signature_key"):
        (tmp_path / name).write_text(f"{name}-value\n")
    s = load_settings(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}, require_base_url=False)
    assert s.api.user_secret.reveal() == "user_secret-value"
    assert s.api.organization_secret.reveal() == "organization_secret-value"
    assert s.api.element_token.reveal() == "element_token-value"
    assert s.callback.signature_key.reveal() == "signature_key-value"


def test_secret_precedence(toml, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "element_token").write_text("from-credentials")
    (tmp_path / "token").write_text("from-file-variable")
    path = toml('[api]\nelement_token = "from-toml"\n')

    def token(env: dict[str, str]) -> str:
        return load_settings(path, env).api.element_token.reveal()

    assert token({}) == "from-toml"
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert token(env) == "from-credentials"
    env["BULKDROP_API_ELEMENT_TOKEN_FILE"] = str(tmp_path / "token")
    assert token(env) == "from-file-variable"
    env["BULKDROP_API_ELEMENT_TOKEN"] = "from-variable"
    assert token(env) == "from-variable"


def test_unreadable_secret_file_names_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    err = error_for(None, {"BULKDROP_API_USER_SECRET_FILE": str(missing)})
    assert err.key == "BULKDROP_API_USER_SECRET_FILE" and str(missing) in str(err)
    bad = tmp_path / "latin1"
    bad.write_bytes(b"\xff" + SECRET.encode())
    err = error_for(None, {"BULKDROP_API_ELEMENT_TOKEN_FILE": str(bad)})
    assert err.key == "BULKDROP_API_ELEMENT_TOKEN_FILE" and SECRET not in str(err)


def test_secret_never_in_errors_or_repr(toml, tmp_path: Path) -> None:
    err = error_for(toml(f"[api]\nuser_secret = [{SECRET!r}]\n"))
    assert err.key == "api.user_secret" and SECRET not in str(err)
    err = error_for(toml("[callback]\nsignature_key = 12345678\n"))
    assert err.key == "callback.signature_key" and "12345678" not in str(err)
    (tmp_path / "sig").write_text(SECRET)
    env = {"BULKDROP_API_USER_SECRET": SECRET, "BULKDROP_API_ORGANIZATION_SECRET": SECRET,
           "BULKDROP_API_ELEMENT_TOKEN": SECRET,
           "BULKDROP_CALLBACK_SIGNATURE_KEY_FILE": str(tmp_path / "sig")}
    s = load_settings(toml(""), env)
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert s.api.user_secret.reveal() == s.callback.signature_key.reveal() == SECRET
    # a later error in the same load does not leak the secrets read before it
    err = error_for(toml(""), {**env, "BULKDROP_WORKERS_UPLOADS": "x"})
    assert SECRET not in str(err)


# --- config file lookup ----------------------------------------------------------------

def test_find_config_path(tmp_path: Path, monkeypatch) -> None:
    assert find_config_path("a.toml", {"BULKDROP_CONFIG": "b.toml"}) == Path("a.toml")
    assert find_config_path(None, {"BULKDROP_CONFIG": "b.toml"}) == Path("b.toml")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "bulkdrop.toml")
    assert find_config_path(None, {}) is None
    (tmp_path / "bulkdrop.toml").write_text("")
    assert find_config_path(None, {"BULKDROP_CONFIG": ""}) == tmp_path / "bulkdrop.toml"


# --- the documented example --------------------------------------------------------------

def test_example_config_loads_with_the_builtin_defaults() -> None:
    s = load_settings(EXAMPLE, {})
    assert s.api.base_url.startswith("https://") and s.api.base_url.endswith("/elements/api-v2")
    builtin = load_settings(None, {"BULKDROP_API_BASE_URL": s.api.base_url})

    def objectless(settings: Settings) -> Settings:
        return dataclasses.replace(settings, objects={}, source=None, instances={
            n: dataclasses.replace(i, objects={}) for n, i in settings.instances.items()})

    # the example states the defaults: loading it changes nothing but its objects
    assert objectless(s) == objectless(builtin)
    assert list(s.instances) == ["default"] and not s.instance_folders
    contact = s.object_settings("contact")
    assert contact.metadata == {"identifierFieldName": "email", "action": "upsert"}


SECTION_TYPES: dict[str, type] = {
    "api": ApiSettings, "spool": SpoolSettings, "workers": WorkersSettings,
    "objects.contact": ObjectSettings, "callback": CallbackSettings, "http": HttpSettings,
    "log": LogSettings,
}


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    sections = re.split(r"^\[([\w.]+)\]\s*$", text, flags=re.MULTILINE)
    bodies = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert set(bodies) == set(SECTION_TYPES)
    derived = {"source", "origins", "default_instance", "instance_folders"}
    assert {f.name for f in dataclasses.fields(Settings)} - derived == {
        name.split(".")[0] for name in SECTION_TYPES} | {"instances", "notify"}
    # [instances.<name>] shown commented out (an example instance would be one), every key
    instance = text.split("# [instances.crm]\n", 1)[1]
    for key in (*(f.name for f in dataclasses.fields(ApiSettings)
                  if not f.name.endswith(("timeout_seconds", "deadline_seconds"))),
                "uploads", "max_active_jobs", "default_object"):
        assert re.search(rf"^# {key} = ", instance, re.MULTILINE), f"instances.*.{key}"
    assert "# [instances.crm.objects.contact]" in instance
    target = text.split("# [[notify.targets]]\n", 1)[1]
    for key in ("name", "url", "on", "format", "signature_key", "instances", "objects"):
        assert re.search(rf"^# {key} = ", target, re.MULTILINE), f"notify.targets.{key}"
    for section, cls in SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            # set, or shown commented out (keys whose default is computed)
            assert re.search(rf"^#? ?{f.name} = ", bodies[section], re.MULTILINE), \
                f"{section}.{f.name} missing from {EXAMPLE}"



def test_readme_reference_lists_every_key() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`((?:api|spool|workers|callback|http|log)\.\w+)`", table))
    expected = {f"{section}.{f.name}" for section, cls in SECTION_TYPES.items()
                if not section.startswith("objects") for f in dataclasses.fields(cls)}
    assert listed == expected
    object_keys = set(re.findall(r"`objects\.<name>\.(\w+)`", table))
    assert object_keys == {f.name for f in dataclasses.fields(ObjectSettings)}
