"""Log buffers: bounded, line-prefixed copies into the combined log, live subscribers."""

from __future__ import annotations

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


async def test_subscribers_get_new_chunks() -> None:
    buffer = LogBuffer("m")
    queue = buffer.subscribe()
    buffer.append(b"x\n")
    assert queue.get_nowait() == b"x\n"
    buffer.unsubscribe(queue)
    buffer.append(b"y\n")
    assert queue.empty()
