"""Large-file benchmark: one big CSV (default 1 GiB) uploaded as a single bulk job.

The same rows in two variants: comma-separated UTF-8 with CRLF (sent byte for byte) and
tab-separated Windows-1252 with CRLF (converted while streaming by daemon/normalise.py).
Measures, for the daemon as a real subprocess against the simulator on loopback:
- seconds from process start to the first upload request (the daemon validates the whole
  file first) and until the simulator has the whole upload (the job exists),
- MiB/s of the upload phase (first request to job) and of the whole (process start to job),
- the daemon's peak RSS (VmHWM; target < 100 MiB) and its CPU seconds,
against curl uploading the same file to the same simulator in the same run. The simulator
runs in this process and parses every record it receives (its CPU seconds are printed as
"bench CPU"), so on 2 cores it competes with the daemon; the first line printed says how
fast it parses alone. The files sit in the page cache: disk speed is not measured.

    .venv/bin/python bench/csv_upload.py                     # 1024 MiB, 3 repeats
    .venv/bin/python bench/csv_upload.py --mb 200 --repeat 1
    .venv/bin/python bench/csv_upload.py --no-email-check    # simulator's fast path
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import itertools
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon import logs  # noqa: E402
from daemon.sim import SimConfig, SimServer, Simulator  # noqa: E402
from daemon.sim.records import RecordParser  # noqa: E402

MIB = 1024 * 1024
CURL = "/usr/bin/curl"
HEADER = ["email", "first_name", "last_name", "company", "note"]
FIRST = ("Anna", "Jürgen", "René", "Chloé", "Björn", "Zoë", "José", "Ingrid", "Paul",
         "Maëlle", "Günther", "Hélène", "Tom", "Søren")
LAST = ("Müller", "Weiß", "Strauß", "Dubois", "Gómez", "Smith", "O'Brien", "Nuñez", "Jäger",
        "Lefèvre", "Brown", "Schröder")
COMPANY = ("Acme, Inc.", "Müller & Söhne GmbH", 'The "Best" Bakery', "Initech",
           "Société Générale", "Globex Corp.", "Straße 7 Logistik")
NOTE = ("", "met at the trade fair, booth 12", 'said "call me in March"', "prefers e-mail",
        "VIP; owes us lunch", "Größe: XL, Farbe: blau")
DOMAIN = ("example.com", "example.org", "mail.example.net")
BLOCK_ROWS = 65536


def _ascii(name: str) -> str:
    name = name.replace("ß", "ss").replace("'", "").lower()
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()


def _render(fields: list[str], delimiter: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(fields)
    return buf.getvalue()


def generate(comma: Path, tab: Path, size: int) -> int:
    """Write both variants (same rows) until the comma file holds `size` bytes; rows."""
    prefix, comma_tail, tab_tail = [], [], []
    for first, last, company, note, domain in itertools.product(FIRST, LAST, COMPANY, NOTE,
                                                                 DOMAIN):
        prefix.append(f"{_ascii(first)}.{_ascii(last)}.")
        rest = [first, last, company, note]
        comma_tail.append(f"@{domain}," + _render(rest, ","))
        tab_tail.append(f"@{domain}\t" + _render(rest, "\t"))
    rng = random.Random(1)
    rows = 0
    with open(comma, "wb") as fc, open(tab, "wb") as ft:
        fc.write(_render(HEADER, ",").encode())
        ft.write(_render(HEADER, "\t").encode("cp1252"))
        while fc.tell() < size:
            picks = list(zip(range(rows, rows + BLOCK_ROWS),
                             rng.choices(range(len(prefix)), k=BLOCK_ROWS), strict=True))
            fc.write("".join([f"{prefix[i]}{n}{comma_tail[i]}" for n, i in picks]).encode())
            ft.write("".join([f"{prefix[i]}{n}{tab_tail[i]}" for n, i in picks])
                     .encode("cp1252"))
            rows += BLOCK_ROWS
    return rows


def sim_parse_rate(path: Path, check_emails: bool, limit: int = 256 * MIB) -> float:
    """MiB/s of the simulator's record parser alone, on the first `limit` bytes of `path`."""
    parser, seen = RecordParser(check_emails), 0
    started = time.perf_counter()
    with open(path, "rb") as fh:
        while seen < limit and (chunk := fh.read(256 * 1024)):
            parser.feed(chunk)
            seen += len(chunk)
    parser.close()
    return seen / MIB / (time.perf_counter() - started)


def proc_stats(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB from VmHWM, user+system CPU seconds) of a live process."""
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return hwm / 1024, cpu


def drop(src: Path, root: Path) -> None:
    """Put `src` into inbox/contact/ at once, settled: link under an ignored name, rename."""
    inbox = root / "inbox" / "contact"
    inbox.mkdir(parents=True)
    staged = inbox / f".{src.name}.part"
    os.link(src, staged)
    old = time.time() - 3600
    os.utime(staged, (old, old))
    staged.rename(inbox / src.name)


def write_config(path: Path, base_url: str, root: Path) -> None:
    path.write_text(
        f'[api]\nbase_url = "{base_url}"\n'
        f'[spool]\nroot = "{root}"\nnode_id = "bench"\nsettle_seconds = 1.0\n'
        '[workers]\nuploads = 4\nmax_active_jobs = 32\npoll_interval_seconds = 0.05\n'
        'poll_max_interval_seconds = 0.2\n[http]\nlisten = ""\n[log]\nlevel = "warning"\n')


async def run_daemon(src: Path, size: int, tmp: Path, sim_config: SimConfig,
                     deadline: float) -> dict[str, float]:
    sim = Simulator(sim_config)
    root = tmp / "spool"
    drop(src, root)
    async with SimServer(sim) as server:
        write_config(tmp / "c.toml", server.base_url, root)
        env = {**os.environ, "BULKDROP_API_USER_SECRET": "u", "BULKDROP_API_ELEMENT_TOKEN": "e"}
        cpu0 = time.process_time()
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(tmp / "c.toml"), env=env,
            stderr=asyncio.subprocess.DEVNULL)
        first, rss_first = 0.0, 0.0
        try:
            while not sim.jobs:
                if not first and sim.creates_attempted:
                    first = time.monotonic() - started
                    rss_first = proc_stats(proc.pid)[0]
                if proc.returncode is not None or time.monotonic() - started > deadline:
                    raise SystemExit(f"{src.name}: no job (daemon exit {proc.returncode})")
                await asyncio.sleep(0.002)
            job = next(iter(sim.jobs.values()))
            rss, cpu = proc_stats(proc.pid)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
        total = job.created_monotonic - started
    return {"first_s": first, "job_s": total, "records": job.records_count,
            "upload_mibs": size / MIB / (total - first), "whole_mibs": size / MIB / total,
            "rss_first_mib": rss_first, "rss_mib": rss, "daemon_cpu_s": cpu,
            "bench_cpu_s": time.process_time() - cpu0}


async def run_curl(src: Path, size: int, sim_config: SimConfig) -> dict[str, float]:
    sim = Simulator(sim_config)
    async with SimServer(sim) as server:
        cpu0 = time.process_time()
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-F", f"file=@{src}",
            "-H", "Authorization: User u, Element e",
            f"{server.base_url}/hubs/marketing/bulk/contact?path=/x.csv",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if out != b"200" or not sim.jobs:
            raise SystemExit(f"curl {src.name}: HTTP {out.decode()}, exit {proc.returncode}")
        total = next(iter(sim.jobs.values())).created_monotonic - started
    return {"job_s": total, "mibs": size / MIB / total,
            "bench_cpu_s": time.process_time() - cpu0}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


Runs = dict[str, list[dict[str, float]]]


async def measure(files: dict[str, Path], sizes: dict[str, int], tmp: Path,
                  args: argparse.Namespace, sim_config: SimConfig) -> tuple[Runs, Runs]:
    daemon: Runs = {name: [] for name in files}
    curl: Runs = {name: [] for name in files}
    for i in range(args.repeat):
        for name, path in files.items():
            work = tmp / f"run{i}-{path.suffix[1:]}"
            daemon[name].append(await run_daemon(path, sizes[name], work, sim_config,
                                                 args.timeout))
            curl[name].append(await run_curl(path, sizes[name], sim_config))
    return daemon, curl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="per daemon run, s")
    parser.add_argument("--no-email-check", action="store_true",
                        help="SimConfig(fail_invalid_emails=False): no per-record csv parse")
    args = parser.parse_args()
    if not os.access(CURL, os.X_OK):
        raise SystemExit(f"{CURL} is needed for the baseline")
    logs.configure("json", "warning")
    sim_config = SimConfig(keep_bodies=False, job_seconds=0.1,
                           fail_invalid_emails=not args.no_email_check)
    with tempfile.TemporaryDirectory(prefix="bench-csv-") as tmp:
        files = {"comma UTF-8, sent as is": Path(tmp) / "contacts.csv",
                 "tab cp1252, converted": Path(tmp) / "contacts-1252.tsv"}
        started = time.monotonic()
        rows = generate(files["comma UTF-8, sent as is"], files["tab cp1252, converted"],
                        args.mb * MIB)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        print(f"generated {rows:,} rows, {', '.join(f'{s / MIB:.0f}' for s in sizes.values())}"
              f" MiB, in {time.monotonic() - started:.1f} s")
        parse = sim_parse_rate(files["comma UTF-8, sent as is"], not args.no_email_check)
        print(f"simulator record parsing alone, one thread: {parse:.0f} MiB/s")
        daemon, curl = asyncio.run(measure(files, sizes, Path(tmp), args, sim_config))
    for name in files:
        d, c = median(daemon[name]), median(curl[name])
        if d["records"] != rows:
            print(f"WARNING {name}: the simulator counted {d['records']:,.0f} records")
        print(f"daemon {name}: first request {d['first_s']:.1f} s, job {d['job_s']:.1f} s; "
              f"upload {d['upload_mibs']:.0f} MiB/s, whole {d['whole_mibs']:.0f} MiB/s; "
              f"peak RSS {d['rss_mib']:.1f} MiB (at first request {d['rss_first_mib']:.1f}); "
              f"daemon CPU {d['daemon_cpu_s']:.1f} s, bench CPU {d['bench_cpu_s']:.1f} s "
              f"(median of {args.repeat})")
        print(f"curl   {name}: job {c['job_s']:.1f} s, {c['mibs']:.0f} MiB/s; "
              f"bench CPU {c['bench_cpu_s']:.1f} s (median of {args.repeat})")
        print(f"ratio daemon/curl {name}: upload phase x{d['upload_mibs'] / c['mibs']:.2f}, "
              f"whole x{d['whole_mibs'] / c['mibs']:.2f}"
              + ("  RSS OVER 100 MiB" if d["rss_mib"] >= 100 else ""))
        near = [who for who, rate in (("daemon upload", d["upload_mibs"]), ("curl", c["mibs"]))
                if rate > 0.7 * parse]
        if near:
            print(f"  note: {' and '.join(near)} ran near the simulator's own parse rate "
                  f"({parse:.0f} MiB/s, in this process): the simulator is the bound there")


if __name__ == "__main__":
    main()
