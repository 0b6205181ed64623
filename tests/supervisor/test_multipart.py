"""The ``model`` field of a multipart body, found in its raw bytes as they arrive."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from homelab.supervisor.multipart import ModelScanner, find_model, replace_model

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for header, value in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; {header}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


FILE_FIRST = form(('name="file"; filename="a.wav"', b"RIFF\r\n--b0und\r\nmodel" * 50),
                  ('name="prompt"', b"hi"), ('name="model"', b"whisper-large"))


def test_find_and_replace_keep_every_other_byte() -> None:
    found = find_model(CONTENT_TYPE, FILE_FIRST)
    assert found is not None and found.value == "whisper-large"
    renamed = replace_model(CONTENT_TYPE, FILE_FIRST, "w")
    assert renamed == FILE_FIRST.replace(b"\r\n\r\nwhisper-large\r\n", b"\r\n\r\nw\r\n")
    assert find_model(CONTENT_TYPE, form(('name="models"', b"x"))) is None
    assert find_model("application/json", FILE_FIRST) is None


@given(st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=200))
def test_scanner_finds_the_field_however_the_body_is_cut(cuts: list[int]) -> None:
    scanner = ModelScanner(BOUNDARY.encode())
    data = bytearray()
    position = 0
    for size in cuts * (len(FILE_FIRST) // sum(cuts) + 1):
        if scanner.done:
            break
        data += FILE_FIRST[position : position + size]
        position += size
        scanner.scan(data)
    assert scanner.done and scanner.found is not None
    assert scanner.found.value == "whisper-large"
    assert FILE_FIRST[scanner.found.start : scanner.found.end] == b"whisper-large"


def test_scanner_stops_at_the_closing_delimiter_without_a_field() -> None:
    scanner = ModelScanner(BOUNDARY.encode())
    scanner.scan(form(('name="file"', b"x" * 100)))
    assert scanner.done and scanner.found is None


def test_read_form_head_reads_only_up_to_the_field() -> None:
    from aiohttp import StreamReader
    from aiohttp.base_protocol import BaseProtocol

    from homelab.supervisor.multipart import read_form_head

    async def run() -> None:
        loop = asyncio.get_running_loop()
        body = form(('name="model"', b"m"), ('name="file"', b"z" * 100_000))
        reader = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        reader.feed_data(body[:1000])  # the client has sent this much so far
        got = await read_form_head(reader, CONTENT_TYPE, len(body), limit=1 << 20)
        assert got.model == "m" and got.rest is not None and len(got.head) == 1000
        renamed = got.renamed("longer-name")
        assert renamed.length == len(body) + len("longer-name") - 1
        stream = renamed.body()
        assert not isinstance(stream, bytes)
        reader.feed_data(body[1000:])
        reader.feed_eof()
        assert b"".join([chunk async for chunk in stream]) == body.replace(b"\r\n\r\nm\r\n", b"\r\n\r\nlonger-name\r\n")

    asyncio.run(run())
