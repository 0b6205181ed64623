"""Bounded in-memory logs: one ring buffer per model plus one for the supervisor itself.

Backends can write a lot (llama-server at -lv 4); a ring buffer bounded in bytes keeps the tail
for error messages (`last lines` of a failed start) and for ``/logs``, and live subscribers get
every new chunk for ``/logs/stream``. A slow subscriber loses chunks rather than slowing the
backend down: its queue is bounded and overflow is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable


class LogBuffer:
    def __init__(
        self,
        name: str,
        max_bytes: int = 256 * 1024,
        parent: LogBuffer | None = None,
        prefix: str | None = None,
        tee: LogBuffer | None = None,
    ) -> None:
        self.name = name
        self.parent = parent
        """Receives a copy of everything appended here (the combined log)..."""
        self.prefix = f"[{prefix}] ".encode() if prefix else b""
        """...with this at the start of every line, so the combined log says whose line it is."""
        self.tee = tee
        """Also receives every chunk as it is (the backends' log, llama-swap's ``upstream``)."""
        self._line_start = True
        self.max_bytes = max_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._subscribers: set[asyncio.Queue[bytes]] = set()
        self.mirror: Callable[[bytes], None] | None = None
        """Also receives every chunk (``logToStdout: upstream|both`` writes backends' output)."""

    def append(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        while self._size > self.max_bytes and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())
        for queue in self._subscribers:
            if not queue.full():
                queue.put_nowait(data)
        if self.parent is not None:
            self.parent.append(self._prefixed(data) if self.prefix else data)
        if self.tee is not None:
            self.tee.append(data)
        if self.mirror is not None:
            self.mirror(data)

    def _prefixed(self, data: bytes) -> bytes:
        """``data`` with the prefix at the start of every line, lines split across chunks too.
        One ``bytes.replace``: llama-server writes a chunk per log line while it serves."""
        out = data.replace(b"\n", b"\n" + self.prefix)
        if self._line_start:
            out = self.prefix + out
        self._line_start = data.endswith(b"\n")
        return out[: -len(self.prefix)] if self._line_start else out

    def contents(self) -> bytes:
        return b"".join(self._chunks)

    def tail(self, lines: int = 10) -> str:
        text = self.contents().decode("utf-8", errors="replace")
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])

    def subscribe(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1024)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._subscribers.discard(queue)


class BufferHandler(logging.Handler):
    """Copies the supervisor's own log records into a :class:`LogBuffer` (for ``/logs``)."""

    def __init__(self, buffer: LogBuffer) -> None:
        super().__init__()
        self.buffer = buffer
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.append((self.format(record) + "\n").encode())
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)
