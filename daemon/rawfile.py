"""A dropped file's bytes: read in chunks, hashed, tested as UTF-8 at C speed, its byte
order mark and line endings found, and opened as text for the csv module. Blocking:
call in a thread.
"""

from __future__ import annotations

import codecs
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from daemon.fileref import FileRef, as_ref

CHUNK = 256 * 1024
CP1252_UNDEFINED = (b"\x81", b"\x8d", b"\x8f", b"\x90", b"\x9d")
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"))


@dataclass
class RawBytes:
    """The pre-pass over the raw bytes: hash, size, and whether they are UTF-8."""
    sha256: str
    size: int
    utf8: bool              # every byte decodes as UTF-8
    error_line: int | None  # the line of the first byte that does not
    non_ascii_before: bool  # something non-ASCII decoded as UTF-8 before that byte
    has_nul: bool
    cp1252: bool = True     # no byte Windows-1252 leaves undefined


def chunks(ref: FileRef, whole: bytes | None) -> Iterator[bytes]:
    if whole is not None:
        yield whole
        return
    with ref.open_binary() as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def prescan(ref: FileRef, check_utf8: bool, whole: bytes | None = None) -> RawBytes:
    """Hash the file and test it as UTF-8 at C speed, chunk by chunk (*whole*: in hand)."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    size = newlines = 0
    utf8, error_line, non_ascii, has_nul, cp1252 = check_utf8, None, False, False, True
    for chunk in chunks(ref, whole):
        digest.update(chunk)
        size += len(chunk)
        has_nul = has_nul or b"\0" in chunk
        ascii = chunk.isascii()
        if utf8 and not (ascii and not decoder.getstate()[0]):
            # (ASCII is UTF-8: only a chunk with other bytes, or after a cut character,
            # is decoded.)
            try:
                non_ascii = not decoder.decode(chunk).isascii() or non_ascii
            except UnicodeDecodeError as exc:
                good = chunk[:exc.start]
                non_ascii = non_ascii or not good.decode("utf-8", "replace").isascii()
                utf8, error_line = False, newlines + good.count(b"\n") + 1
        # Read as Windows-1252 only when not UTF-8 and ASCII before the bad byte: only
        # from that chunk on can a byte it leaves undefined matter.
        if check_utf8 and not utf8 and cp1252 and not ascii:
            cp1252 = not any(byte in chunk for byte in CP1252_UNDEFINED)
        newlines += chunk.count(b"\n")
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8, error_line = False, newlines + 1
    return RawBytes(digest.hexdigest(), size, utf8, error_line, non_ascii, has_nul, cp1252)


def codec_of(encoding: str) -> str:
    """The codec that reads a file of *encoding*: UTF-16 with a BOM reads its own BOM."""
    return "utf-16" if encoding.startswith("utf-16") else encoding


def open_text(source: Path | FileRef, encoding: str) -> io.TextIOWrapper:
    """The file as text for the csv module: C-level decoding, universal newlines kept."""
    text: io.TextIOWrapper = as_ref(source).open(
        "r", encoding=codec_of(encoding), errors="strict", newline="")
    return text


def bounded_lines(text: TextIO, limit: int) -> Iterator[str]:
    """The lines of *text*, none longer than *limit* characters: a longer one is cut
    there (the csv module then sees garbage, never an unbounded line). For reading a
    file that passed its checks; :func:`inspect` reports such lines instead."""
    readline = text.readline
    return iter(lambda: readline(limit), "")


def bom_encoding(head: bytes, whole: bool) -> str | None:
    """The encoding a byte order mark at the start declares, if the bytes bear it out: a
    Windows-1252 file may begin with "þÿ" (FE FF), which is no UTF-16 file of odd length
    or with a half character in it."""
    for bom, name in BOMS:
        if head.startswith(bom):
            if name.startswith("utf-16"):
                try:
                    codecs.getincrementaldecoder(name)().decode(head, final=whole)
                except UnicodeDecodeError:
                    return None
            return name
    return None


def line_endings(text: str) -> str:
    """CRLF, LF, CR or none, from a sample of the text."""
    if "\n" in text:
        return "CRLF" if "\r\n" in text else "LF"
    return "CR" if "\r" in text else "none"


def digest(source: Path | FileRef) -> tuple[str, int]:
    """sha256 and size of any file, read in chunks."""
    hashed = hashlib.sha256()
    size = 0
    with as_ref(source).open_binary() as fh:
        while chunk := fh.read(CHUNK):
            hashed.update(chunk)
            size += len(chunk)
    return hashed.hexdigest(), size


def bad_byte_line(ref: FileRef, codec: str) -> int | None:
    """The line of the first byte *codec* cannot decode (the text layer reads ahead)."""
    # (utf-8-sig's decoder counts a bad byte's place from after the byte order mark.)
    decoder = codecs.getincrementaldecoder("utf-8" if codec == "utf-8-sig" else codec)("strict")
    newlines = 0
    with ref.open_binary() as fh:
        while chunk := fh.read(CHUNK):
            try:
                newlines += decoder.decode(chunk).count("\n")
            except UnicodeDecodeError as exc:
                good = chunk[:exc.start].decode(codec, "replace")
                return newlines + good.count("\n") + 1
    return None
