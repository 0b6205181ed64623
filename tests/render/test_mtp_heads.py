"""Whether a model's ``mtp:`` can take effect, from real GGUF headers and the build's MTP list."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf

from homelab.render.assemble import _mtp_heads

from .conftest import example_host

MTP_ARCHS = frozenset({"qwen35", "qwen35moe"})


def write_header(path: Path, arch: str, nextn: int) -> Path:
    """A metadata-only GGUF: what facts_from_file reads (no tensors needed)."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in {
        "block_count": 5, "embedding_length": 256, "attention.head_count": 8, "attention.head_count_kv": 4,
        "vocab_size": 1000, "context_length": 4096, "feed_forward_length": 1024,
    }.items():
        writer.add_uint32(f"{arch}.{key}", value)
    if nextn:
        writer.add_uint32(f"{arch}.nextn_predict_layers", nextn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def host_with_one_mtp_model(server: dict | None = None):
    host = example_host("xtx")
    model = next(m for m in host.models if m.mtp is not None)
    if server is not None:
        model = dataclasses.replace(model, server={**model.server, **server})
    return dataclasses.replace(host, models=(model,)), model.id


def test_heads_in_the_gguf_of_an_arch_with_an_mtp_graph(tmp_path: Path) -> None:
    host, mid = host_with_one_mtp_model()
    weights = {mid: (write_header(tmp_path / "m.gguf", "qwen35moe", 1),)}
    assert _mtp_heads(host, weights, MTP_ARCHS) == ({mid: True}, {})


def test_heads_of_an_arch_llama_cpp_runs_no_mtp_graph_for(tmp_path: Path) -> None:
    host, mid = host_with_one_mtp_model()
    weights = {mid: (write_header(tmp_path / "m.gguf", "llama", 1),)}
    supported, why = _mtp_heads(host, weights, MTP_ARCHS)
    assert supported == {mid: False} and "no MTP graph for architecture 'llama'" in why[mid]
    # an older build that did not record its list: the GGUF alone decides
    assert _mtp_heads(host, weights, None) == ({mid: True}, {})


def test_no_heads_anywhere(tmp_path: Path) -> None:
    host, mid = host_with_one_mtp_model()
    weights = {mid: (write_header(tmp_path / "m.gguf", "qwen35moe", 0),)}
    supported, why = _mtp_heads(host, weights, MTP_ARCHS)
    assert supported == {mid: False} and "has no MTP heads" in why[mid]


def test_heads_in_a_separate_file_declared_as_the_draft(tmp_path: Path) -> None:
    head = write_header(tmp_path / "mtp-qwen35moe.gguf", "qwen35moe", 1)
    host, mid = host_with_one_mtp_model()
    weights = {mid: (write_header(tmp_path / "m.gguf", "qwen35moe", 0),)}
    assert _mtp_heads(host, weights, MTP_ARCHS, {mid: head}) == ({mid: True}, {})
    # a head file without heads says so, naming the file's architecture
    empty = write_header(tmp_path / "not-a-head.gguf", "qwen35moe", 0)
    supported, why = _mtp_heads(host, weights, MTP_ARCHS, {mid: empty})
    assert supported == {mid: False} and "has no MTP heads" in why[mid]


def test_models_without_mtp_are_not_read(tmp_path: Path) -> None:
    host, mid = host_with_one_mtp_model()
    plain = dataclasses.replace(host.models[0], mtp=None)
    host = dataclasses.replace(host, models=(plain,))
    assert _mtp_heads(host, {mid: (tmp_path / "absent.gguf",)}, MTP_ARCHS) == ({}, {})

