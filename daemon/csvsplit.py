"""A large CSV file checked on two cores: the first half here, the second in a child
process (``python -m daemon.csvsplit``), at the same time.

The child is handed the open file (its descriptor, never a path) and where to start: the
first line after the middle. Its findings count only when both halves were read to their
ends, every byte decoding as UTF-8, and the first half, read alone, ended outside any
quoted field (so the two meet at a record's end). Anything else (the halves do not meet
there; a byte that is not UTF-8; a line too long or another problem that stops reading,
after which bytes go undecoded; a child that cannot start or fails) and the file is
checked in order by :func:`daemon.csvfile.inspect`, as a smaller file is, which finds
the same. The whole file is hashed meanwhile in a thread (hashlib lets go of the GIL).

Only a file that is UTF-8 by its first bytes (or its byte order mark), has LF or CRLF
line ends, and is at least :data:`SPLIT_MIN` bytes goes this way; and only where two
CPUs are free to take it.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

from daemon import csvfile, rawfile
from daemon.csvfile import Columns, Dialect, Inspection, Problem, Scan
from daemon.fileref import FileRef

SPLIT_MIN = 64 << 20
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
CHILD_ENV = ("PATH", "PYTHONHOME", "LD_LIBRARY_PATH", "LANG", "LC_ALL")
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def inspect(source: Path | FileRef, columns: Columns | None = None) -> Inspection:
    """:func:`daemon.csvfile.inspect`, on two cores when the file is large enough."""
    return csvfile.inspect(source, columns, split=_split)


def _split(ref: FileRef, columns: Columns, size: int) -> Inspection | None:
    if size < SPLIT_MIN or _cores() < 2:
        return None
    try:
        return inspect_split(ref, columns)
    except InterruptedError:
        raise  # stopped by a signal: no verdict, and no second reading now
    except OSError:
        return None  # read in order: the error is the file's, or is raised there


def _cores() -> int:
    """The CPUs this process may use: its affinity, within its cgroup's CPU quota (a
    container or a service limited to one CPU gains nothing from a second process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        with open("/proc/self/cgroup") as fh:
            group = next(line[3:].strip() for line in fh if line.startswith("0::"))
        quota, period = Path("/sys/fs/cgroup", group.lstrip("/"), "cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, int(quota) // int(period))
    except (OSError, StopIteration, ValueError):
        pass  # no cgroup v2 here: the affinity says it
    return cores


def inspect_split(ref: FileRef, columns: Columns) -> Inspection | None:
    """The file checked in two halves at once; None when it is not one to split, or the
    halves cannot stand for reading it in order (then the caller does)."""
    with ref.open_binary(buffering=0) as first, ref.open_binary(buffering=0) as second:
        size = os.fstat(first.fileno()).st_size
        if size < SPLIT_MIN:
            return None
        head = first.read(rawfile.CHUNK)
        dialect = _dialect(head)
        middle = _line_start_after(second, size // 2)
        if dialect is None or middle is None:
            return None
        first.seek(0)
        codec = rawfile.codec_of(dialect.encoding)
        text = io.TextIOWrapper(io.BufferedReader(_Upto(first, middle), rawfile.CHUNK),
                                encoding=codec, newline="")
        # UTF-8 by its first bytes only: a byte that is not ends this (the fast path
        # reads blocks, not lines, and raises).
        scan = Scan(columns, check_nul=True, sink=None, decodable=True)
        try:
            width = csvfile.check_header(scan, text, dialect, None)
            if not width or scan.stopped:
                return None
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                digest = pool.submit(rawfile.digest, ref)
                with _start_second_half(second, middle, dialect, width) as child:
                    try:
                        csvfile.check_body(scan, text, dialect, width, None)
                        found = None if scan.stopped else _second_half(child)
                    finally:
                        if child.poll() is None:
                            child.kill()  # its findings are not wanted
                sha256, read = digest.result()
        except UnicodeDecodeError:
            return None
    if scan.stopped or found is None or found["stopped"] or found["undecodable"]:
        # Reading stopped (a line too long; a quote never closed, as at a middle inside
        # a quoted field) or met a byte that is not UTF-8: what comes after was never
        # decoded, so only reading in order, from the bytes up, can say what the file is.
        return None
    _join(scan, found)
    csvfile.check_rows_found(scan, width)
    return Inspection(sha256, read, scan.lines, dialect, scan.header, scan.rows,
                      tuple(scan.problems), scan.total)


def _dialect(head: bytes) -> Dialect | None:
    """The dialect of a file that starts as UTF-8 with LF or CRLF line ends, else None."""
    encoding = rawfile.bom_encoding(head, False)
    if encoding not in (None, "utf-8-sig"):
        return None
    try:
        sample = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return None
    dialect = csvfile.dialect_of(sample, encoding or "utf-8")
    return dialect if dialect.line_endings in ("LF", "CRLF") else None


def _line_start_after(fh: BinaryIO, offset: int) -> int | None:
    """Where the first line after *offset* starts; None if none starts within reach."""
    fh.seek(offset)
    end = offset + 4 * csvfile.LINE_LIMIT + 4  # a longer line is reported either way
    while offset < end and (chunk := fh.read(rawfile.CHUNK)):
        at = chunk.find(b"\n")
        if at >= 0:
            return offset + at + 1
        offset += len(chunk)
    return None


class _Upto(io.RawIOBase):
    """A raw file read up to *end*, as if it ended there."""

    def __init__(self, raw: BinaryIO, end: int) -> None:
        self.raw = raw
        self.left = end - raw.tell()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buffer)
        read = self.raw.readinto(view[:self.left]) or 0  # type: ignore[attr-defined]
        self.left -= read
        return read


def _start_second_half(fh: BinaryIO, start: int, dialect: Dialect,
                       width: int) -> subprocess.Popen[bytes]:
    """The child checking from *start* to the end, given the open file *fh*."""
    fd = fh.fileno()
    args = {"fd": fd, "start": start, "encoding": dialect.encoding, "width": width,
            "delimiter": dialect.delimiter, "line_endings": dialect.line_endings,
            "line_limit": csvfile.LINE_LIMIT}
    # Of the daemon's environment (its secrets among it) only what finds Python goes to
    # the child; it imports nothing from its working folder (-P; the spool, maybe); and a
    # terminal's Ctrl-C is the daemon's alone (it stops, and waits for the check to end).
    env = {key: os.environ[key] for key in CHILD_ENV if key in os.environ}
    return subprocess.Popen([sys.executable, "-P", "-m", "daemon.csvsplit", json.dumps(args)],
                            pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**env, "PYTHONPATH": PACKAGE_ROOT},
                            cwd="/", start_new_session=True)


def _second_half(child: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    """What the child found; None if it failed (logged). A child stopped by a signal as
    a service stopping sends every process of it raises :class:`InterruptedError`: the
    check is tried again later, never read in order while the daemon stops."""
    out, err = child.communicate()
    if -child.returncode in STOPPING:
        raise InterruptedError(errno.EINTR, "the check of the file's second half was "
                               f"stopped by signal {-child.returncode}")
    if child.returncode == 0:
        try:
            found: dict[str, Any] = json.loads(out)
            return found
        except ValueError:
            pass
    from daemon.logs import get_logger  # not in the child: it starts faster without

    get_logger().warning("check.second_half_failed", code=child.returncode,
                         error=err.decode("utf-8", "replace")[-500:])
    return None


def _join(scan: Scan, found: dict[str, Any]) -> None:
    """Add the second half's findings to the first's: its lines after the first's."""
    offset = scan.lines
    for line, message in found["problems"][:max(0, csvfile.MAX_PROBLEMS - len(scan.problems))]:
        scan.problems.append(Problem(None if line is None else line + offset, message))
    scan.total += found["total"]
    scan.lines += found["lines"]
    scan.rows += found["rows"]


def check_second_half(args: dict[str, Any]) -> dict[str, Any]:
    """The child's work: check the records from ``start`` to the end of the file."""
    csvfile.set_line_limit(args["line_limit"])
    dialect = Dialect(args["encoding"], args["delimiter"], args["line_endings"])
    with os.fdopen(args["fd"], "rb", buffering=0) as raw:
        raw.seek(args["start"])
        text = io.TextIOWrapper(io.BufferedReader(raw, rawfile.CHUNK), encoding="utf-8",
                                newline="")
        scan = Scan(Columns(), check_nul=True, sink=None, decodable=True)
        try:
            csvfile.check_body(scan, text, dialect, args["width"], None)
        except UnicodeDecodeError:  # a block with a byte that is not UTF-8
            scan.undecodable = True
    problems = [(p.line, p.message) for p in scan.problems]
    return {"lines": scan.lines, "rows": scan.rows, "problems": problems,
            "total": scan.total, "stopped": scan.stopped, "undecodable": scan.undecodable}


def main() -> None:
    json.dump(check_second_half(json.loads(sys.argv[1])), sys.stdout)


if __name__ == "__main__":
    main()
