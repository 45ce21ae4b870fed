"""The simulator's CSV record parser: any chunking of the upload, and garbage."""

from __future__ import annotations

from daemon.sim.records import RecordParser


def test_record_parser_handles_any_chunking() -> None:
    content = ('\ufeffEMAIL,name\r\nbad,"a\r\nb"\r\n\r\nok@x,"c "" d"\r\n"no-at",e').encode()
    for step in (1, 2, 3, 7, len(content)):
        parser = RecordParser(check_emails=True)
        for start in range(0, len(content), step):
            parser.feed(content[start : start + step])
        parser.close()
        assert (parser.records_count, parser.failed_count) == (3, 2)
        assert [r["recordNumber"] for r in parser.failed_records] == [1, 3]
        assert parser.failed_records[0]["record"] == {"EMAIL": "bad", "name": "a\r\nb"}


def test_record_parser_survives_garbage() -> None:
    parser = RecordParser(check_emails=True)
    parser.feed(b'\xff\xfeemail\n"unterminated\nx\x00y\n')
    parser.close()
    assert parser.records_count == 1
