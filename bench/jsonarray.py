"""6. JSON array: one big `.json` file (default 1 GiB), a top-level array of contact
objects: the daemon's peak RSS and its upload rate.

The array holds bench/csv_upload.py's contact rows as objects (strings as they are, UTF-8,
plus a nested address, a list of tags, a number and a boolean), one compact object a line
between `[` and `]`, at most the size asked for (at 1 GiB still within the default
`max_bytes_per_job`: one job). The daemon reads it once to check it (element by
element), then uploads it as JSON lines, an object a line; the same objects are written
beside it as those JSON lines, the file the daemon's upload must equal (the job's sha256
is compared).

- upload MB/s: bytes of the JSON lines / (first POST seen at the simulator -> job
  created), against `curl -F "file=@converted.jsonl;type=application/json"` of the JSON
  lines to the same simulator: the same bytes / curl's time_total.
- end to end MB/s: the same bytes / (drop -> job created), the check included; shown for
  information beside the same curl figure.
- peak RSS: VmHWM of the daemon after the file is filed; the baseline is its VmHWM after
  start-up and one small file.

The simulator runs with `--no-fail-invalid-emails` (it counts the lines of a JSON upload
without decoding them); its CPU share during each upload is reported. Files sit in the
page cache.

    .venv/bin/python -m bench.jsonarray              # 1 GiB, nothing written but the table
    .venv/bin/python -m bench.jsonarray --size 64    # smoke run: 64 MiB
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import largefile
from bench.common import MB, MIB, Row, Sim, log, snapshot_daemon
from bench.csv_upload import COMPANY, DOMAIN, FIRST, LAST, NOTE, _ascii
from bench.largefile import daemon_upload

CITY = (("Hauptstraße", "10115", "Berlin", "DE"), ("Bahnhofstrasse", "8001", "Zürich", "CH"),
        ("Rue de la Paix", "75002", "Paris", "FR"), ("Calle Mayor", "28013", "Madrid", "ES"),
        ("Nørregade", "1165", "København", "DK"), ("Main Street", "02108", "Boston", "US"))
TAGS = ((), ("newsletter",), ("customer", "vip"), ("lead", "trade fair"))
NUMBER = "#N#"  # where each object's own number goes in its template
BLOCK_OBJECTS = 65536
OPEN, CLOSE = b"[\n", b"\n]\n"


def templates() -> list[tuple[str, str]]:
    """One compact object per combination of the contact fields, cut where its number
    goes (in the e-mail address): (text before, text after)."""
    rng = random.Random(2)
    out = []
    for first, last, company, note, domain in itertools.product(FIRST, LAST, COMPANY, NOTE,
                                                                 DOMAIN):
        street, postcode, city, country = rng.choice(CITY)
        record = {"email": f"{_ascii(first)}.{_ascii(last)}.{NUMBER}@{domain}",
                  "first_name": first, "last_name": last, "company": company, "note": note,
                  "address": {"street": f"{street} {rng.randint(1, 120)}",
                              "postcode": postcode, "city": city, "country": country},
                  "tags": list(rng.choice(TAGS)), "score": rng.randint(0, 100),
                  "subscribed": rng.random() < 0.5}
        head, tail = json.dumps(record, ensure_ascii=False, separators=(",", ":")).split(NUMBER)
        out.append((head, tail))
    return out


def _fit(texts: list[str], room: int) -> list[str]:
    """The first *texts* whose `,\\n`-joined UTF-8 takes at most *room* bytes."""
    used, count = -2, 0
    for text in texts:
        used += len(text.encode()) + 2
        if used > room:
            break
        count += 1
    return texts[:count]


def generate(array: Path, lines: Path, size: int) -> tuple[int, str]:
    """Write the array (at most *size* bytes) and its objects as JSON lines, a block at a
    time; (objects, sha256 of the JSON lines)."""
    parts = templates()
    rng = random.Random(1)
    digest = hashlib.sha256()
    objects = 0
    with open(array, "wb") as fa, open(lines, "wb") as fl:
        fa.write(OPEN)
        room = size - len(OPEN) - len(CLOSE)
        while True:
            picks = rng.choices(parts, k=BLOCK_OBJECTS)
            texts = [f"{head}{n}{tail}" for n, (head, tail) in enumerate(picks, objects)]
            sep = b",\n" if objects else b""
            data = ",\n".join(texts).encode()
            full = len(sep) + len(data) > room
            if full:
                texts = _fit(texts, room - len(sep))
                if not texts:
                    break
                data = ",\n".join(texts).encode()
            fa.write(sep + data)
            room -= len(sep) + len(data)
            out = ("\n".join(texts) + "\n").encode()
            fl.write(out)
            digest.update(out)
            objects += len(texts)
            if full:
                break
        fa.write(CLOSE)
    return objects, digest.hexdigest()


async def curl_upload(sim: Sim, src: Path, size: int) -> dict[str, Any]:
    """The same JSON lines by `curl -F ...;type=application/json`, and the records the
    simulator counted."""
    found = await largefile.curl_upload(sim, src, size, "application/json")
    job = max(await sim.control("GET", "/_sim/jobs"), key=lambda j: int(j["id"]))
    return {**found, "records": job["recordsCount"]}


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (nothing else runs yet)
    src, converted = work / "contacts.json", work / "converted.jsonl"
    started = time.monotonic()
    objects, sha256 = generate(src, converted, args.array_mb * MIB)
    size, sent = src.stat().st_size, converted.stat().st_size
    log(f"jsonarray: generated {size / MB:,.0f} MB, {objects:,} objects ({sent / MB:,.0f} MB "
        f"as JSON lines) in {time.monotonic() - started:.1f} s")
    try:
        async with Sim(work / "sim", job_seconds=0.0) as sim:
            log("jsonarray: daemon")
            daemon = await daemon_upload(sim, work / "daemon", src, sent)
            job = max(await sim.control("GET", "/_sim/jobs"), key=lambda j: int(j["id"]))
            daemon["job_sha256_matches"] = job["sha256"] == sha256
            log("jsonarray: curl -F")
            curl = await curl_upload(sim, converted, sent)
    finally:
        src.unlink(missing_ok=True)
        converted.unlink(missing_ok=True)
    label = f"{size / MB:,.0f} MB array, {objects:,} objects"
    note = ""
    if (daemon["records"] != objects or daemon["job_bytes"] != sent or daemon["failed"]
            or not daemon["job_sha256_matches"] or curl["records"] != objects):
        note = (f"CHECK: job has {daemon['records']:,} records, {daemon['job_bytes']:,} bytes "
                f"(sha256 {'as' if daemon['job_sha256_matches'] else 'NOT as'} the JSON "
                f"lines), failed={daemon['failed']}; curl's job {curl['records']:,} records")
    out = [
        Row("jsonarray", f"peak RSS, {label}", daemon["peak_rss_mb"], "MB",
            "daemon after start + 1 small file", daemon["rss_after_start_mb"], "MB",
            "<= 100 MB", daemon["peak_rss_mb"] <= 100, None, note),
        Row("jsonarray", "upload MB/s (first POST -> job)", daemon["upload_mb_s"], "MB/s",
            "curl -F, same JSON lines", curl["mb_s"], "MB/s", "(information)", None,
            daemon["upload_sim_cpu_share"],
            f"sim CPU share during curl {curl['sim_cpu_share']:.2f}; daemon CPU share "
            f"{daemon['upload_daemon_cpu_share']:.2f}; MB/s of the {sent / MB:,.0f} MB sent"),
        Row("jsonarray", "end-to-end MB/s (drop -> job)", daemon["whole_mb_s"], "MB/s",
            "curl -F, same JSON lines", curl["mb_s"], "MB/s", "(information)", None, None,
            f"includes {daemon['validate_s']:.1f} s of checks before the POST"),
    ]
    return out, {"daemon": daemon, "curl": curl, "objects": objects, "array_bytes": size}


def main() -> None:
    """This scenario alone, on a copy of daemon/, printed (bench/results.json untouched)."""
    from bench.__main__ import table  # the runner imports this module

    parser = argparse.ArgumentParser(
        description="the jsonarray scenario alone: a JSON array's peak RSS and upload rate")
    parser.add_argument("--size", type=int, default=1024, metavar="MIB",
                        help="the array's size in MiB (1024)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bulkdrop-jsonarray-"))
    log(f"work folder {work}")
    snapshot_daemon(work / "code")
    try:
        rows, detail = asyncio.run(run(argparse.Namespace(array_mb=args.size), work / "run"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print(json.dumps(detail, indent=2))


if __name__ == "__main__":
    main()
