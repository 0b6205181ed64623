"""The ``model`` field of a ``multipart/form-data`` body, found in its raw bytes.

Uploads (``/v1/audio/transcriptions``, ``/v1/images/edits``) are forwarded byte for byte: only
the bytes up to the end of the ``model`` field are read before the request is dispatched, and the
rest of the body streams from the client to the backend. Clients put form fields before files
(the ``openai`` client, ``curl -F`` in argument order), so that prefix is a few hundred bytes; a
client that sends the file first makes us buffer up to the field (bounded by ``limit``).
llama-swap reads every form whole (32 MiB in memory, the rest in temporary files).

Renaming the model (``useModelName``, a peer's own name for it) replaces only the field's value.

An upload is bounded as the front door bounds other bodies (:class:`UploadLimits`): its total as
received (``x-security.maxBodyMiB``, whatever its ``Content-Length`` said or did not say) and the
wait for each next piece (``x-security.bodyTimeout``). A broken limit raises :class:`UploadRefused`
from the read, or from the body's iterator while it is being sent, which aborts the backend's
request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import Message

from aiohttp import StreamReader

_MODEL_HEADER = re.compile(rb'(?im)^content-disposition:[^\r\n]*;\s*name="?model"?\s*(?:;|$)')


def boundary_of(content_type: str) -> bytes | None:
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    return boundary.encode() if isinstance(boundary, str) and boundary else None


@dataclass(frozen=True)
class Field:
    value: str
    start: int
    """Where the value's bytes start in the body..."""
    end: int
    """...and end (the ``\\r\\n`` before the next delimiter)."""


class ModelScanner:
    """Finds the ``model`` field in a body that arrives in pieces, without rescanning it."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._part_at = -1
        """Where the delimiter of the part being read starts (-1: the first one not seen yet)."""
        self.done = False
        self.found: Field | None = None

    def scan(self, data: bytes | bytearray) -> None:
        """Look again at the whole body received so far (``data`` only grows between calls)."""
        delimiter = self._delimiter
        while not self.done:
            if self._part_at < 0:
                self._part_at = data.find(delimiter)
                if self._part_at < 0:
                    return
            after = self._part_at + len(delimiter)
            if len(data) < after + 2:
                return
            if data[after : after + 2] == b"--":  # the closing delimiter: no model field
                self.done = True
                return
            head_end = data.find(b"\r\n\r\n", after)
            if head_end < 0:
                return
            value_at = head_end + 4
            value_end = data.find(b"\r\n" + delimiter, value_at)
            if value_end < 0:
                return
            if _MODEL_HEADER.search(data, after, head_end + 2):
                value = bytes(data[value_at:value_end]).decode(errors="replace").strip()
                self.found = Field(value, value_at, value_end)
                self.done = True
                return
            self._part_at = value_end + 2


def find_model(content_type: str, body: bytes) -> Field | None:
    """The ``model`` field of a whole body (None without one, or when it is not multipart)."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    scanner = ModelScanner(boundary)
    scanner.scan(body)
    return scanner.found


def replace_model(content_type: str, body: bytes, model: str) -> bytes:
    """``body`` with its ``model`` field's value replaced, every other byte as it was (audio or
    image parts are never re-encoded). Unchanged when there is no such field."""
    found = find_model(content_type, body)
    if found is None or found.value == model:
        return body
    return body[: found.start] + model.encode() + body[found.end :]


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    """The most bytes the client may send in all."""
    idle_timeout: float | None
    """Seconds the client may take to send the next piece (None: no limit)."""


class UploadRefused(Exception):
    """The client's upload broke a limit; ``code`` is ``body_too_large`` or ``body_timeout``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def _next_piece(content: StreamReader, limits: UploadLimits | None, received: int) -> bytes:
    """The next piece of the body (empty at its end), within ``limits``."""
    if limits is None:
        return await content.readany()
    try:
        async with asyncio.timeout(limits.idle_timeout):
            piece = await content.readany()
    except TimeoutError:
        raise UploadRefused("body_timeout") from None
    if received + len(piece) > limits.max_bytes:
        raise UploadRefused("body_too_large")
    return piece


@dataclass
class StreamedForm:
    """A multipart request read up to its ``model`` field; the rest is still with the client."""

    head: bytes
    field: Field | None
    rest: StreamReader | None
    """The unread remainder of the request body (None: ``head`` is the whole body)."""
    length: int | None
    """The body's length as forwarded, when the client sent a Content-Length."""
    searched: bool = True
    """False when the read stopped at the limit before the model field (or the body's end)."""
    received: int = 0
    """Bytes read from the client so far (``head`` as it arrived)."""
    limits: UploadLimits | None = None

    @property
    def model(self) -> str | None:
        return self.field.value if self.field else None

    def renamed(self, model: str) -> StreamedForm:
        """The same form with ``model`` in its model field (as is without one)."""
        found = self.field
        if found is None or found.value == model:
            return self
        value = model.encode()
        head = self.head[: found.start] + value + self.head[found.end :]
        length = None if self.length is None else self.length + len(value) - (found.end - found.start)
        field = Field(model, found.start, found.start + len(value))
        return StreamedForm(head, field, self.rest, length, self.searched, self.received, self.limits)

    def body(self) -> bytes | AsyncIterator[bytes]:
        return self.head if self.rest is None else self._stream(self.rest)

    async def _stream(self, rest: StreamReader) -> AsyncIterator[bytes]:
        yield self.head
        received = self.received
        while chunk := await _next_piece(rest, self.limits, received):
            received += len(chunk)
            yield chunk


async def read_form_head(
    content: StreamReader, content_type: str, length: int | None, limit: int, limits: UploadLimits | None = None
) -> StreamedForm:
    """Read ``content`` until its ``model`` field has been seen, the body ended, or ``limit``
    bytes were read without either (then ``searched`` is False). ``limits`` bound the whole
    upload, this read and the rest (:class:`UploadRefused`)."""
    boundary = boundary_of(content_type)
    scanner = ModelScanner(boundary) if boundary else None
    head = bytearray()
    searched = True
    while scanner is None or not scanner.done:
        chunk = await _next_piece(content, limits, len(head))
        if not chunk:
            return StreamedForm(bytes(head), None, None, length, received=len(head), limits=limits)
        head += chunk
        if scanner is not None:
            scanner.scan(head)
        if len(head) > limit and (scanner is None or not scanner.done):
            searched = False
            break
    rest = None if content.is_eof() else content
    found = scanner.found if scanner else None
    return StreamedForm(bytes(head), found, rest, length, searched, len(head), limits)
