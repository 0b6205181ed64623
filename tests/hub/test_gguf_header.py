"""Remote GGUF header: Range reads of the resolve URL give the same metadata as the local file."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from fakehub import FakeHub

from homelab.hub import gguf_header
from homelab.hub.gguf_header import (
    GGUFHeaderError,
    read_local_header,
    read_remote_header,
)
from homelab.testing.tiny_gguf import TinySpec, write_tiny_llama


def test_local_header_matches_gguf_reader(tiny_model: Path) -> None:
    header = read_local_header(tiny_model)
    reader = gguf.GGUFReader(tiny_model)
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert header.fields == expected
    assert [(t.name, t.shape, t.ggml_type, t.n_bytes, t.offset) for t in header.tensors] == [
        (t.name, [int(d) for d in t.shape], t.tensor_type.name, int(t.n_bytes), int(t.data_offset))
        for t in reader.tensors
    ]
    assert header.architecture == "llama" and header.fields["llama.block_count"] == 2
    assert header.field_types["tokenizer.ggml.tokens"] == "ARRAY[STRING]"


def test_remote_header_equals_local_and_reads_only_the_header(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a bigger model so the header is a small part of the file; a small first read to force growth
    path = write_tiny_llama(tmp_path / "m.gguf", TinySpec(n_layer=4, n_embd=256, n_ff=512, name="m"))
    hub.add_repo("acme/m-GGUF", {"m.gguf": path})
    monkeypatch.setattr(gguf_header, "FIRST_READ", 4096)
    local = read_local_header(path)
    remote = read_remote_header("acme/m-GGUF", "m.gguf", "main")
    assert remote == local
    got = [r for r in hub.requests if r.host == "cdn"]
    assert len(got) >= 2, "the read grows in steps"
    fetched = sum(int(r.headers["range"].split("-")[1]) - int(r.headers["range"][6:].split("-")[0]) + 1 for r in got)
    assert fetched < path.stat().st_size / 4
    # cached by sha256: with the lock's sha256 no request at all
    hub.clear_requests()
    sha = hub.file("acme/m-GGUF", "m.gguf").sha256
    assert read_remote_header("acme/m-GGUF", "m.gguf", "main", sha256=sha) == local
    assert hub.requests == []
    assert gguf_header.header_cache_path(sha).exists()


def test_remote_header_errors(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/bad", {"bad.gguf": b"NOTAGGUF" * 10, "cut.gguf": b"GGUF\x03\x00\x00\x00" + b"\x01" * 20})
    with pytest.raises(GGUFHeaderError, match="acme/bad/bad.gguf.*not a GGUF"):
        read_remote_header("acme/bad", "bad.gguf")
    with pytest.raises(GGUFHeaderError, match="truncated"):
        read_remote_header("acme/bad", "cut.gguf")
    with pytest.raises(GGUFHeaderError, match="EntryNotFound"):
        read_remote_header("acme/bad", "nope.gguf")
    with pytest.raises(GGUFHeaderError, match="HF_TOKEN"):
        read_remote_header("acme/gated-GGUF", "g.gguf")
