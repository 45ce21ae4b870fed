"""The ``bulkdrop`` command line: thin wrappers over the daemon, the client and the simulator.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__, csvfile, csvsplit, exits, jsonfile, logs
from daemon.config import find_config_path, load_settings
from daemon.settings import ConfigError, InstanceSettings, Settings
from daemon.sim import cli as sim_cli

SANDBOX_DEFAULTS = {
    "spool.root": "spool",
    "spool.default_object": "contact",
    "spool.default_instance": "crm",
    "api.user_secret": "",
    "api.organization_secret": "",
    "api.element_token": "",  # [api] is no instance of its own here
    "http.listen": "",
    "workers.poll_interval_seconds": 1.0,
}
# Two connector instances with tokens of their own: the simulator keeps a job space per
# token, as two instances of one account do.
SANDBOX_INSTANCES: dict[str, dict[str, object]] = {
    name: {"hub": hub, "user_secret": "sandbox-user", "element_token": f"sandbox-{name}",
           "default_object": "contact"}
    for name, hub in (("crm", "crm"), ("marketing", "marketing"))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkdrop",
        description="Turn CSV files dropped into a spool into Open Connectors bulk jobs.")
    parser.add_argument("--version", action="version", version=f"bulkdrop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, sandbox: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", metavar="PATH",
                         help="TOML config (default: $BULKDROP_CONFIG, "
                              "else /etc/bulkdrop/bulkdrop.toml if present)")
        if sandbox:
            sub.add_argument("--sandbox", action="store_true",
                             help="the sandbox's spool (./spool) and, while `bulkdrop run "
                                  "--sandbox` runs in this folder, its simulator")
        return sub

    run = command("run", "run the daemon in the foreground")
    run.add_argument("--sandbox", action="store_true",
                     help="start the embedded Open Connectors simulator and use ./spool")
    objects = command("objects", "list the objects of each instance's hub", sandbox=True)
    objects.add_argument("--instance", metavar="N", help="only this connector instance's")
    validate = command("validate", "check a file as the daemon would, without uploading")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.add_argument("--object", metavar="O",
                          help="apply this object's column settings from the config")
    validate.add_argument("--instance", metavar="N",
                          help="the object's settings at this instance (default: the "
                               "default instance)")
    status = command("status", "counts by state, the latest files, the oldest waiting file",
                     sandbox=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    retry = command("retry", "move failed files back into inbox/ under their route",
                    sandbox=True)
    retry.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    retry.add_argument("--all", action="store_true", help="every file in failed/")
    retry.add_argument("--failed-rows", type=Path, metavar="PATH",
                       help="drop the failed rows of PATH (a file in done/ or failed/, or "
                            "its .failed.csv) into inbox/<object>/ as <name>.retry-N.csv")
    submit = command("submit", "upload one file outside the spool", sandbox=True)
    submit.add_argument("file", type=Path, metavar="FILE")
    submit.add_argument("--object", required=True, metavar="O")
    submit.add_argument("--instance", metavar="N",
                        help="the connector instance to send it to (default: the default "
                             "instance)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job to its end and print its result")
    command("config", "the effective configuration, secrets masked, with each value's origin",
            sandbox=True)
    notify = command("notify", "notifications: send a sample to the targets", sandbox=True)
    notify.add_argument("action", choices=["test"])
    notify.add_argument("--target", metavar="N", help="only this target (its name)")
    sim = command("sim", "serve the Open Connectors simulator on its own")
    sim_cli.add_arguments(sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `bulkdrop status | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.OK


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
    except ConfigError as exc:
        return _crashed(f"configuration error: {exc}", exits.USAGE, key=exc.key)
    except KeyboardInterrupt:
        return 130
    try:
        if args.command == "objects":
            return cmd_objects(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command in OPERATOR_COMMANDS:
            return OPERATOR_COMMANDS[args.command](args)
        return sim_cli.run(args)
    except ConfigError as exc:
        print(f"bulkdrop: configuration error: {exc}", file=sys.stderr)
        return exits.USAGE
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace, **kwargs: Any) -> Settings:
    """The settings; with ``--sandbox`` (besides ``run``), the sandbox's: its spool and
    made-up credentials, whatever a config file or the environment says (so real
    secrets never go to it), and the simulator of the ``run --sandbox`` serving it."""
    path = find_config_path(args.config, os.environ)
    if getattr(args, "sandbox", False):
        kwargs["instances"] = SANDBOX_INSTANCES
    if getattr(args, "sandbox", False) and args.command != "run":
        forced: dict[str, object] = {**SANDBOX_DEFAULTS, **kwargs.get("forced", {})}
        spool = Path(str(SANDBOX_DEFAULTS["spool.root"]))
        url = _sandbox_url(spool)
        if url:
            forced["api.base_url"] = url
            kwargs["notify"] = _sandbox_notify(url.removesuffix("/elements/api-v2"))
            forced["http.listen"] = _sandbox_listen(spool)  # status asks its /readyz
        elif kwargs.get("require_base_url", True):
            raise ConfigError("api.base_url", "no sandbox serves ./spool: start `bulkdrop "
                              "run --sandbox` in this folder first")
        kwargs["forced"] = forced
    return load_settings(path, os.environ, **kwargs)


def _sandbox_notify(sim_root: str) -> dict[str, object]:
    """The sandbox's [notify]: its simulator's webhook sink."""
    return {"targets": [{"name": "sandbox", "url": f"{sim_root}/_sim/webhooks",
                         "signature_key": "sandbox-webhook"}]}


def _sandbox_state(spool: Path) -> Path:
    """Where a running sandbox says where its simulator is, for the other commands."""
    return spool / ".state" / "sandbox.json"


def _sandbox_url(spool: Path) -> str | None:
    """The URL a running sandbox left, if it is one on this machine (read without
    following a link: the spool may be droppers' ground)."""
    from urllib.parse import urlsplit

    from daemon.fileref import FileRef

    try:
        with FileRef(_sandbox_state(spool)).open("r", encoding="utf-8") as fh:
            url = json.load(fh)["base_url"]
        host = urlsplit(url).hostname
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return url if host in ("127.0.0.1", "::1", "localhost") else None


def _sandbox_listen(spool: Path) -> str:
    """Where the running sandbox's listener is, if on loopback; "" if unknown."""
    from daemon.fileref import FileRef

    try:
        with FileRef(_sandbox_state(spool)).open("r", encoding="utf-8") as fh:
            listen = str(json.load(fh)["listen"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    host, _, port = listen.rpartition(":")
    return listen if host == "127.0.0.1" and port.isascii() and port.isdigit() else ""


def _note_sandbox(state: Path, url: str, listen: str) -> None:
    tmp = state.with_name(f".{state.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"base_url": url, "listen": listen}))
    os.replace(tmp, state)  # whole or not at all; a link there is replaced, not followed


def _forget_sandbox(state: Path, url: str) -> None:
    """Remove the note, unless another sandbox has written its own since."""
    if _sandbox_url(state.parents[1]) == url:
        state.unlink(missing_ok=True)


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: 0 only when stopped by SIGTERM/SIGINT; whatever else ends it is one
    ``daemon.crashed`` line naming the cause and a non-zero exit code (2 for a bad
    configuration, which a restart cannot fix)."""
    from daemon.service import Daemon, StartupError
    from daemon.spool import SpoolError

    try:
        if args.sandbox:
            return _run_sandbox(args)
        settings = _settings(args)
        logs.configure(settings.log.format, settings.log.level)
        return Daemon(settings).run()
    except (SpoolError, StartupError, OSError) as exc:
        return _crashed(f"cannot start: {exc}", exits.FAILURE)


def _crashed(error: str, code: int, **context: str) -> int:
    """One ``daemon.crashed`` line (JSON under systemd and Docker) for a daemon that
    cannot start; logging is set up here if the configuration never got that far."""
    if not structlog.is_configured():
        logs.configure()
    logs.get_logger().error("daemon.crashed", error=error, exit_code=code, **context)
    return code


def _run_sandbox(args: argparse.Namespace) -> int:
    """The simulator and the daemon in one process, one event loop."""
    from daemon.service import Daemon, run_event_loop
    from daemon.sim import SimConfig, SimServer, Simulator

    # Load once without a base URL to fail fast on a bad config before binding a port.
    _settings(args, defaults=SANDBOX_DEFAULTS, require_base_url=False)

    async def both() -> int:
        sim = Simulator(SimConfig(job_seconds=3.0))
        async with SimServer(sim, host="127.0.0.1", port=0) as server:
            settings = _settings(args, defaults={**SANDBOX_DEFAULTS,
                                                 "http.listen": "127.0.0.1:0"}, forced={
                "api.base_url": server.base_url, "api.user_secret": "",
                "api.organization_secret": "", "api.element_token": ""},
                notify=_sandbox_notify(server.root_url))
            logs.configure(settings.log.format, settings.log.level)
            daemon = Daemon(settings)
            serving = asyncio.create_task(daemon.serve_until_signalled())
            state = _sandbox_state(settings.spool.root)
            serving.add_done_callback(lambda _: _forget_sandbox(state, server.base_url))
            ready = asyncio.create_task(daemon.ready.wait())
            await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
            if daemon.ready.is_set():  # inbox/<default object>/ is there now
                listen = f"127.0.0.1:{daemon.http.port}" if daemon.http is not None else ""
                await asyncio.to_thread(_note_sandbox, state, server.base_url, listen)
                inbox = daemon.spool.inbox
                default = settings.default_instance
                others = [n for n in settings.instances if n != default]
                print(f"bulkdrop sandbox: simulator at {server.base_url}\n"
                      f"  two connector instances, each with its own token: "
                      f"{', '.join(settings.instances)}\n"
                      f"  drop CSV files into {inbox}/contact/ (instance {default}; or any "
                      f"{inbox}/<object>/, and files directly in {inbox}/ go to "
                      f"'{settings.spool.default_object}')\n"
                      + "".join(f"  or into {inbox}/{name}/contact/ (instance {name})\n"
                                for name in others) +
                      f"  results appear in {daemon.spool.done}/ and {daemon.spool.failed}/\n"
                      + (f"  web view: http://127.0.0.1:{daemon.http.port}/\n"
                         if daemon.http is not None else "") +
                      f"  failed, rejected and partial files are notified to the simulator's "
                      f"webhook sink: curl {server.root_url}/_sim/webhooks\n"
                      f"  objects: {', '.join(sim.config.objects)}; Ctrl-C stops\n"
                      f"  the API's other answer shapes: curl -X PATCH {server.root_url}"
                      "/_sim/config -d '{\"status_shape\": \"v3\", \"error_shape\": "
                      "\"plain\"}'", flush=True)
            ready.cancel()
            return await serving

    return run_event_loop(both())


def cmd_objects(args: argparse.Namespace) -> int:
    from daemon.client import OpenConnectorsClient
    from daemon.retry import ApiError, AuthError

    settings = _settings(args)
    if _no_such_instance(settings, args.instance, needed=False):
        return exits.USAGE
    logs.configure(settings.log.format, settings.log.level)
    chosen = [args.instance] if args.instance else list(settings.instances)
    code = exits.OK
    for name in chosen:
        inst = settings.instances[name]
        api = inst.api
        keys = ("api" if name == "default" and not settings.instance_folders
                else f"instances.{name}")
        client = OpenConnectorsClient.from_settings(api, timeout_cap=60)
        if len(chosen) > 1:
            print(f"[{name}] hub {api.hub}")
        try:
            names = asyncio.run(client.once(partial(OpenConnectorsClient.objects, hub=api.hub)))
        except AuthError as exc:
            print(f"bulkdrop: {name}: the API refused the credentials (HTTP {exc.status}: "
                  f"{exc.message}); check {keys}.user_secret and {keys}.element_token",
                  file=sys.stderr)
            code = exits.FAILURE
            continue
        except ApiError as exc:
            status = f"HTTP {exc.status}: " if exc.status else ""
            print(f"bulkdrop: {name}: cannot list objects of hub {api.hub!r}: "
                  f"{status}{exc.message}", file=sys.stderr)
            code = exits.FAILURE
            continue
        for obj in names:
            print(f"  {obj}" if len(chosen) > 1 else obj)
    return code




def _no_such_instance(settings: Settings, name: str | None, needed: bool) -> bool:
    """Say so (and return True) when *name* is no instance, or when none is given but one
    is *needed* and there is no default instance to take."""
    if name is not None and name not in settings.instances:
        problem = f"no instance {name!r}"
    elif name is None and needed and settings.default_instance is None:
        problem = "no default instance: name one with --instance"
    else:
        return False
    print(f"bulkdrop: {problem} (instances: {', '.join(settings.instances)})",
          file=sys.stderr)
    return True


def cmd_validate(args: argparse.Namespace) -> int:
    from daemon.spool import has_accepted_suffix, is_json_name

    settings = _settings(args, require_base_url=False)
    csvfile.set_line_limit(settings.spool.max_line_length)
    columns = csvfile.Columns()
    if _no_such_instance(settings, args.instance, needed=bool(args.object)):
        return exits.USAGE
    inst = settings.instance(args.instance)
    if args.object:
        columns = csvfile.Columns.of(inst.object_settings(args.object))
    path: Path = args.file
    try:
        if is_json_name(path.name):
            found_json = jsonfile.inspect(path, columns)
            code = _validate_json(path, found_json, columns)
            if code == exits.OK and args.object and inst.api.base_url:
                _warn_unknown_columns(inst, args.object, found_json.keys, columns, "key")
            return code
        found = csvsplit.inspect(path, columns)
    except OSError as exc:
        print(f"bulkdrop: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return exits.FAILURE
    print(f"file: {path} ({found.bytes} bytes, sha256 {found.sha256})")
    if found.dialect is not None:
        d = found.dialect.describe()
        print(f"dialect: {d['delimiter']}-separated, {d['encoding']}, "
              f"{d['line_endings']} line endings")
    if found.header:
        print(f"header: {len(found.header)} columns: {', '.join(found.header)}")
    print(f"rows: {found.rows} (lines: {found.lines})")
    problems = [str(p) for p in found.problems]
    if not has_accepted_suffix(path.name):
        problems.insert(0, "not named as a CSV or JSON file (.csv, .tsv, .txt, .json, "
                           ".jsonl, .ndjson): the daemon rejects it")
    if _rejected(problems, found.problems_total + (len(problems) - len(found.problems))):
        return exits.REJECTED
    if args.object and inst.api.base_url:
        _warn_unknown_columns(inst, args.object, found.header, columns)
    how = "as is" if found.passes_through(columns) else "converted to comma-separated UTF-8"
    print(f"result: accepted (sent {how})")
    return exits.OK


def _rejected(problems: Sequence[str], total: int) -> bool:
    """Print a file's problems, if any, and the verdict they make."""
    if not problems:
        return False
    print(f"problems ({total}):")
    for line in problems:
        print(f"  {line}")
    print("result: rejected")
    return True


def _validate_json(path: Path, found: jsonfile.JsonInspection,
                   columns: csvfile.Columns) -> int:
    print(f"file: {path} ({found.bytes} bytes, sha256 {found.sha256})")
    if found.form is not None:
        print(f"form: {'JSON lines' if found.form == 'lines' else 'a JSON array'}")
    if found.keys:
        more = " (the first 1,000)" if len(found.keys) >= jsonfile.MAX_KEYS else ""
        print(f"keys{more}: {', '.join(found.keys)}")
    print(f"objects: {found.rows}")
    if _rejected([str(p) for p in found.problems], found.problems_total):
        return exits.REJECTED
    how = "as is" if found.passes_through(columns) else "converted to JSON lines"
    print(f"result: accepted (sent {how})")
    return exits.OK


def _warn_unknown_columns(inst: InstanceSettings, obj: str, header: Sequence[str],
                          columns: csvfile.Columns, kind: str = "column") -> None:
    """Compare the columns (a JSON file's top-level keys) as they would be sent with the
    object's fields, when the API says."""
    from daemon.client import OpenConnectorsClient
    from daemon.retry import ApiError

    client = OpenConnectorsClient.from_settings(inst.api, timeout_cap=30)
    try:
        fields = asyncio.run(client.once(lambda c: c.object_fields(inst.hub_for(obj), obj)))
    except ApiError as exc:
        print(f"note: no field list for {obj!r} from the API ({exc.message})")
        return
    if not fields:
        return
    sent = [columns.rename.get(n, n) for n in csvfile.header_names(header)
            if n not in (*columns.drop, jsonfile.ERROR_KEY)]
    for name in sent:
        if name not in fields:
            print(f"warning: {kind} {name!r} is not a field of {obj!r} "
                  f"(fields: {', '.join(fields)})")


def cmd_status(args: argparse.Namespace) -> int:
    from daemon import ops

    report = ops.status(_settings(args, require_base_url=False))
    print(json.dumps(report, indent=2) if args.json else ops.format_status(report))
    unread = "ledger_error" in report and not report["inbox"]["waiting"]
    return exits.FAILURE if unread else exits.OK


def cmd_retry(args: argparse.Namespace) -> int:
    from daemon import ops
    from daemon.spool import Spool

    settings = _settings(args, require_base_url=False)
    spool = Spool(settings.spool.root, settings.spool.node_id)
    if args.failed_rows:
        try:
            target = ops.retry_failed_rows(spool, args.failed_rows)
        except (ValueError, OSError) as exc:
            print(f"bulkdrop: cannot send the failed rows of {args.failed_rows} again: "
                  f"{exc}", file=sys.stderr)
            return exits.FAILURE
        print(f"{args.failed_rows} -> {target}")
        return exits.OK
    if bool(args.paths) == bool(args.all):
        print("bulkdrop: give the failed files to retry, or --all, or --failed-rows PATH",
              file=sys.stderr)
        return exits.USAGE
    paths = list(ops.failed_files(spool)) if args.all else args.paths
    code = exits.OK
    for path in paths:
        try:
            target = ops.retry(spool, path)
        except (ValueError, OSError) as exc:
            print(f"bulkdrop: cannot retry {path}: {exc}", file=sys.stderr)
            code = exits.FAILURE
            continue
        print(f"{path} -> {target}")
    if not paths:
        print("nothing in failed/ to retry")
    return code


def cmd_submit(args: argparse.Namespace) -> int:
    from daemon import ops
    from daemon.retry import ApiError

    settings = _settings(args)
    if _no_such_instance(settings, args.instance, needed=True):
        return exits.USAGE
    logs.configure(settings.log.format, settings.log.level)
    try:
        code, result = asyncio.run(ops.submit(settings, args.file, args.object, args.wait,
                                              args.instance))
    except OSError as exc:
        print(f"bulkdrop: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return exits.FAILURE
    except ApiError as exc:
        print(f"bulkdrop: upload failed: {exc.message}", file=sys.stderr)
        return exits.FAILURE
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return code


def cmd_config(args: argparse.Namespace) -> int:
    from daemon import ops

    settings = _settings(args, require_base_url=False)
    print(f"# from {settings.source or 'no config file'}; secrets shown as \"***\"")
    for dotted, value, origin in ops.effective_config(settings):
        print(f"{dotted} = {value}  # {origin}")
    return exits.OK


def cmd_notify(args: argparse.Namespace) -> int:
    from daemon import ops

    settings = _settings(args, require_base_url=False)
    names = [t.name for t in settings.notify.targets]
    if not names:
        print("bulkdrop: no [[notify.targets]] in the config", file=sys.stderr)
        return exits.USAGE
    if args.target is not None and args.target not in names:
        print(f"bulkdrop: no target {args.target!r} (targets: {', '.join(names)})",
              file=sys.stderr)
        return exits.USAGE
    code = exits.OK
    for name, status, text in asyncio.run(ops.notify_test(settings, args.target)):
        ok = status is not None and 200 <= status < 300
        print(f"{name}: {'HTTP ' + str(status) if status is not None else 'no answer'}"
              f"{' (sent)' if ok else ''}: {text}")
        code = code if ok else exits.FAILURE
    return code


OPERATOR_COMMANDS = {"status": cmd_status, "retry": cmd_retry, "submit": cmd_submit,
                     "config": cmd_config, "notify": cmd_notify}
