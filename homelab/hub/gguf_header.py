"""Read a GGUF file's metadata (key/values and tensor infos) without its tensor data.

The same :class:`GGUFHeader` comes back for a local file (:func:`read_local_header`) and for a
file on the Hub (:func:`read_remote_header`, HTTP Range requests on the resolve URL that grow
until the header is complete), so the VRAM plan can run before a 20 GB download.

Why a small parser of our own instead of ``gguf.GGUFReader``: the reader memory-maps a whole file
and cannot say "I need more bytes"; we must know exactly where the header ends to ask the Hub
for just that much. Constants (value types, quant block sizes, type names) come from the
``gguf`` package; tests check the result against ``GGUFReader`` on the same file.

Remote headers are cached as JSON under ``$HOMELAB_STATE/gguf-headers/<sha256>.json``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import requests

from ..errors import HomelabError
from ..files import atomic_write_text
from ..http_client import http_session
from ..settings import hf_endpoint, hf_token, state_dir

GGUF_MAGIC = b"GGUF"
FIRST_READ = 1 << 20
"""Bytes asked for first; real headers (150k-token vocabularies) are 5-15 MiB, tiny ones 20 KiB."""
MAX_HEADER = 1 << 30
"""A header larger than this is not a GGUF we understand (guards a corrupt length field)."""


class GGUFHeaderError(HomelabError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int]
    """ggml order, as stored in the file: ``shape[0]`` is the innermost (contiguous) dimension."""
    ggml_type: str
    """``gguf.GGMLQuantizationType`` name: F32, F16, Q4_K, IQ4_XS..."""
    n_bytes: int
    offset: int
    """Absolute byte offset of the tensor's data in the file."""

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]
    """Key -> value: ints, floats, bools, str (decoded UTF-8), or lists of those."""
    tensors: list[TensorInfo]
    header_size: int
    """Bytes before the tensor data (KV + tensor infos + alignment padding)."""
    file_size: int | None = None
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT
    field_types: dict[str, str] = field(default_factory=dict)
    """Key -> GGUF value type name (``UINT32``, ``STRING``, ``ARRAY[FLOAT32]``), for exactness."""

    @property
    def architecture(self) -> str | None:
        arch = self.fields.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> GGUFHeader:
        raw = json.loads(text)
        raw["tensors"] = [TensorInfo(**t) for t in raw["tensors"]]
        return cls(**raw)


# --------------------------------------------------------------------------------------------
# Parsing


class NeedMore(Exception):
    """The buffer ends inside the header: read at least ``size`` bytes and parse again."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


_SCALARS: dict[int, str] = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


class _Cursor:
    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            # Ask for what is missing plus headroom: a vocabulary array is read in one go.
            raise NeedMore(max(end, len(self.buf) * 2))
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > MAX_HEADER:
            raise GGUFHeaderError(f"string length {n} at byte {self.pos}: not a valid GGUF")
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> tuple[Any, str]:
        if vtype == gguf.GGUFValueType.STRING:
            return self.string(), "STRING"
        if vtype == gguf.GGUFValueType.ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if count > MAX_HEADER:
                raise GGUFHeaderError(f"array length {count} at byte {self.pos}: not a valid GGUF")
            item_name = _type_name(item_type)
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                size = struct.calcsize(fmt)
                raw = self.take(size * count)
                items = [v for (v,) in struct.iter_unpack(fmt, raw)] if count else []
            else:
                items = [self.value(item_type)[0] for _ in range(count)]
            return items, f"ARRAY[{item_name}]"
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype]), _type_name(vtype)
        raise GGUFHeaderError(f"unknown GGUF value type {vtype} at byte {self.pos}")


def _type_name(vtype: int) -> str:
    try:
        return gguf.GGUFValueType(vtype).name
    except ValueError:
        raise GGUFHeaderError(f"unknown GGUF value type {vtype}") from None


def parse_header(buf: bytes | bytearray | memoryview, file_size: int | None = None) -> GGUFHeader:
    """Parse the header at the start of ``buf``; raises :class:`NeedMore` when it is cut short."""
    cur = _Cursor(buf)
    if bytes(cur.take(4)) != GGUF_MAGIC:
        raise GGUFHeaderError("not a GGUF file (the first bytes are not 'GGUF')")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFHeaderError(f"unsupported GGUF version {version} (homelab reads 2 and 3)")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    fields: dict[str, Any] = {}
    types: dict[str, str] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("<I")
        fields[key], types[key] = cur.value(vtype)
    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        shape = [cur.unpack("<Q") for _ in range(n_dims)]
        ggml_type = cur.unpack("<I")
        offset = cur.unpack("<Q")
        raw_tensors.append((name, shape, ggml_type, offset))
    alignment = int(fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, shape, ggml_type, offset in raw_tensors:
        try:
            qtype = gguf.GGMLQuantizationType(ggml_type)
        except ValueError:
            raise GGUFHeaderError(f"tensor {name}: unknown ggml type {ggml_type}") from None
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = 1
        for d in shape:
            n *= d
        tensors.append(TensorInfo(name, shape, qtype.name, n // block * type_size, data_start + offset))
    return GGUFHeader(
        version=version,
        fields=fields,
        tensors=tensors,
        header_size=data_start,
        file_size=file_size,
        alignment=alignment,
        field_types=types,
    )


def read_local_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The header of a GGUF on disk, reading only the header bytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            want = min(FIRST_READ, size)
            while True:
                f.seek(0)
                buf = f.read(want)
                try:
                    return parse_header(buf, file_size=size)
                except NeedMore as more:
                    if want >= size:
                        raise GGUFHeaderError(f"{path}: truncated GGUF (header runs past the end)") from None
                    want = min(more.size, size)
    except OSError as exc:
        raise GGUFHeaderError(f"{path}: cannot read GGUF header ({exc.strerror or exc})") from None
    except GGUFHeaderError as exc:
        raise GGUFHeaderError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Remote


def header_cache_path(sha256: str) -> Path:
    return state_dir() / "gguf-headers" / f"{sha256}.json"


def _cache_get(sha256: str | None) -> GGUFHeader | None:
    if not sha256:
        return None
    try:
        return GGUFHeader.from_json(header_cache_path(sha256).read_text())
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _cache_put(sha256: str, header: GGUFHeader) -> None:
    path = header_cache_path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, header.to_json())


def resolve_url(repo: str, path: str, revision: str, endpoint: str | None = None) -> str:
    return f"{(endpoint or hf_endpoint()).rstrip('/')}/{repo}/resolve/{revision}/{path}"


def read_remote_header(
    repo: str,
    path: str,
    revision: str = "main",
    *,
    sha256: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    session: requests.Session | None = None,
) -> GGUFHeader:
    """The header of ``repo/path@revision`` on the Hub, from Range requests of growing size.

    With ``sha256`` (from the lock) a cached header costs no request. Without it the file's
    sha256 is learned from the Hub's ``X-Linked-Etag`` and the header is cached under it.
    """
    cached = _cache_get(sha256)
    if cached is not None:
        return cached
    url = resolve_url(repo, path, revision, endpoint)
    return read_url_header(
        url,
        sha256=sha256,
        token=token if token is not None else hf_token(),
        session=session,
        what=f"{repo}/{path}@{revision}",
    )


def read_url_header(
    url: str,
    *,
    sha256: str | None = None,
    token: str | None = None,
    session: requests.Session | None = None,
    what: str | None = None,
) -> GGUFHeader:
    """The header of the GGUF at ``url`` (any server that honours Range), cached by sha256."""
    cached = _cache_get(sha256)
    if cached is not None:
        return cached
    what = what or url
    http = session or http_session()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    buf = bytearray()
    total: int | None = None
    want = FIRST_READ
    learned_sha: str | None = None
    while True:
        end = want - 1 if total is None else min(want, total) - 1
        resp = _range_get(http, url, len(buf), end, headers, what)
        if total is None:
            total = _total_size(resp)
            learned_sha = _linked_sha(resp)
        buf += resp.content
        try:
            header = parse_header(buf, file_size=total)
            break
        except NeedMore as more:
            if resp.status_code == 200 or (total is not None and len(buf) >= total):
                raise GGUFHeaderError(f"{what}: truncated GGUF (header runs past the end of the file)") from None
            if more.size > MAX_HEADER:
                raise GGUFHeaderError(f"{what}: GGUF header larger than {MAX_HEADER} bytes") from None
            want = max(more.size, len(buf) * 2)
        except GGUFHeaderError as exc:
            raise GGUFHeaderError(f"{what}: {exc}") from None
    key = sha256 or learned_sha
    if key:
        _cache_put(key, header)
    return header


def _range_get(
    http: requests.Session, url: str, start: int, end: int, headers: dict[str, str], what: str
) -> requests.Response:
    try:
        resp = http.get(url, headers={**headers, "Range": f"bytes={start}-{end}"}, timeout=60)
    except requests.RequestException as exc:
        raise GGUFHeaderError(f"{what}: cannot read the GGUF header over HTTP ({exc})") from None
    if resp.status_code in (401, 403):
        raise GGUFHeaderError(
            f"{what}: HTTP {resp.status_code}: the repository is gated or private. Set HF_TOKEN to a "
            "token with read access and accept the model's license on its Hub page."
        )
    if resp.status_code == 404:
        code = resp.headers.get("X-Error-Code", "")
        raise GGUFHeaderError(f"{what}: not found on the Hub ({code or 'HTTP 404'}); check repo, file and revision")
    if resp.status_code == 416:
        raise GGUFHeaderError(f"{what}: truncated GGUF (header runs past the end of the file)")
    if resp.status_code not in (200, 206):
        raise GGUFHeaderError(f"{what}: HTTP {resp.status_code} while reading the GGUF header")
    return resp


def _total_size(resp: requests.Response) -> int | None:
    content_range = resp.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    if resp.status_code == 200 and resp.headers.get("Content-Length"):
        return int(resp.headers["Content-Length"])
    return None


def _linked_sha(resp: requests.Response) -> str | None:
    """The LFS sha256 the Hub announced on the resolve response (before the CDN redirect)."""
    for r in [*resp.history, resp]:
        etag = (r.headers.get("X-Linked-Etag") or "").strip('"').removeprefix("W/").strip('"')
        if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
            return etag
    return None


def read_pinned_header(pf: Any, local: Path | None = None) -> GGUFHeader:
    """The header of a pinned file (``homelab.lock.PinnedFile``): from ``local`` when that file is
    there (fetched already), else from the Hub (``hf``) or the URL (``url``), cached by sha256.

    ``local`` is where fetch puts it (``homelab.hub.cache.local_path(pf, inventory)``).
    """
    cached = _cache_get(pf.sha256)
    if cached is not None:
        return cached
    if local is not None and local.exists():
        header = read_local_header(local)
    elif pf.source == "hf":
        return read_remote_header(pf.repo, pf.path, pf.revision, sha256=pf.sha256)
    elif pf.source == "url":
        return read_url_header(pf.path, sha256=pf.sha256)
    else:
        raise GGUFHeaderError(f"{pf.path}: no such file; restore it or re-lock the model")
    _cache_put(pf.sha256, header)
    return header
