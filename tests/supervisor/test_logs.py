"""Log buffers: bounded, line-prefixed copies into the combined log, live subscribers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from homelab.supervisor.logs import LogBuffer


def test_ring_buffer_is_bounded_and_tail_gives_last_lines() -> None:
    buffer = LogBuffer("m", max_bytes=100)
    for i in range(50):
        buffer.append(f"line {i}\n".encode())
    assert len(buffer.contents()) <= 100 + 10
    assert buffer.tail(2) == "line 48\nline 49"


def test_combined_log_prefixes_every_line_across_chunks() -> None:
    combined = LogBuffer("all")
    model = LogBuffer("a", parent=combined, prefix="a")
    for chunk in (b"one\ntw", b"o\n", b"\n", b"three"):
        model.append(chunk)
    assert combined.contents() == b"[a] one\n[a] two\n[a] \n[a] three"
    assert model.contents() == b"one\ntwo\n\nthree"


@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"")) | st.sampled_from([b"\n", b"\n\n", b"x\n"]), max_size=12))
def test_every_line_is_prefixed_however_the_output_is_chunked(chunks: list[bytes]) -> None:
    combined = LogBuffer("all")
    model = LogBuffer("a", parent=combined, prefix="a")
    for chunk in chunks:
        model.append(chunk)
    text = b"".join(chunks)
    lines = text.split(b"\n")
    expected = b"\n".join(b"[a] " + line for line in lines[:-1]) + (b"\n" if len(lines) > 1 else b"")
    if lines[-1]:
        expected += b"[a] " + lines[-1]
    assert combined.contents() == expected


async def test_subscribers_get_new_chunks() -> None:
    buffer = LogBuffer("m")
    queue = buffer.subscribe()
    buffer.append(b"x\n")
    assert queue.get_nowait() == b"x\n"
    buffer.unsubscribe(queue)
    buffer.append(b"y\n")
    assert queue.empty()
