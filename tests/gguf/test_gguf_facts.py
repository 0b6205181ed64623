"""Model facts from GGUF metadata, per architecture family, from real files written with gguf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from metadata_writer import write_metadata_gguf

from homelab.cli import main
from homelab.gguf.facts import FactsError, facts_from_file
from homelab.gguf.ref import HFRef, RefError, parse_ref
from homelab.testing.tiny_gguf import (
    TinyArchSpec,
    TinySpec,
    write_tiny_arch,
    write_tiny_llama,
)


def test_tiny_llama_facts_and_exact_tensor_bytes(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "t.gguf", TinySpec(n_layer=3, n_embd=128, n_head=4, n_head_kv=2, n_ff=256))
    f = facts_from_file(path)
    assert (f.architecture, f.n_layer, f.n_embd, f.n_vocab, f.n_ff) == ("llama", 3, 128, 259, 256)
    assert f.n_head == (4, 4, 4) and f.n_head_kv == (2, 2, 2)
    assert (f.head_dim_k, f.head_dim_v) == (32, 32)  # default n_embd / n_head
    assert f.k_per_token(0) == 64 and f.v_per_token(0) == 64
    by_name = {t.name: t for t in f.tensors}
    assert by_name["blk.0.attn_k.weight"].shape == (128, 64)
    assert by_name["blk.0.attn_k.weight"].n_bytes == 128 * 64 * 4
    assert by_name["token_embd.weight"].ggml_type == "F32"
    # every tensor counted once: the data section of the file is the sum, up to alignment padding
    assert f.weights_bytes == sum(t.n_bytes for t in f.tensors)
    assert f.weights_bytes <= path.stat().st_size
    assert not f.n_swa and not any(f.recurrent_layers) and not f.is_moe and not f.is_mla


def test_llama_sliding_window_key_is_ignored_like_llama_cpp(tmp_path: Path) -> None:
    f = facts_from_file(write_tiny_llama(tmp_path / "t.gguf", TinySpec(sliding_window=512)))
    assert f.n_swa == 0 and not any(f.swa_layers)


BASE = {"embedding_length": 256, "attention.head_count": 8, "attention.head_count_kv": 4, "vocab_size": 1000,
        "context_length": 32768, "feed_forward_length": 1024}


def test_gemma3_five_local_layers_to_one_global(tmp_path: Path) -> None:
    f = facts_from_file(write_metadata_gguf(tmp_path / "g.gguf", "gemma3", {
        **BASE, "block_count": 12, "attention.sliding_window": 1024, "attention.key_length": 128,
        "attention.value_length": 128}))
    assert f.n_swa == 1024
    assert f.swa_layers == (True,) * 5 + (False,) + (True,) * 5 + (False,)
    assert f.head_dim_k == 128  # explicit key_length, not n_embd / n_head


def test_explicit_sliding_window_pattern_array_wins(tmp_path: Path) -> None:
    pattern = [True, False, True, False]
    f = facts_from_file(write_metadata_gguf(tmp_path / "g.gguf", "gemma3", {
        **BASE, "block_count": 4, "attention.sliding_window": 512, "attention.sliding_window_pattern": pattern}))
    assert f.swa_layers == tuple(pattern)


def test_gemma3_without_window_has_no_swa(tmp_path: Path) -> None:
    f = facts_from_file(write_metadata_gguf(tmp_path / "g.gguf", "gemma3", {**BASE, "block_count": 6}))
    assert f.n_swa == 0


def test_per_layer_head_arrays(tmp_path: Path) -> None:
    f = facts_from_file(write_metadata_gguf(tmp_path / "p.gguf", "llama", {
        **BASE, "block_count": 3, "attention.head_count": [8, 8, 16], "attention.head_count_kv": [2, 4, 8]}))
    assert f.n_head == (8, 8, 16) and f.n_head_kv == (2, 4, 8)
    assert f.head_dim_k == 256 // 16
    assert [f.k_per_token(i) for i in range(3)] == [32, 64, 128]


def test_deepseek2_mla_caches_latent_and_rope_only(tmp_path: Path) -> None:
    f = facts_from_file(write_metadata_gguf(tmp_path / "d.gguf", "deepseek2", {
        **BASE, "block_count": 4, "attention.head_count_kv": 1, "attention.kv_lora_rank": 512,
        "rope.dimension_count": 64, "attention.key_length": 576, "attention.value_length": 512,
        "attention.key_length_mla": 192, "attention.value_length_mla": 128,
        "expert_count": 64, "expert_used_count": 6, "expert_shared_count": 2,
        "expert_feed_forward_length": 1408}))
    assert f.is_mla and f.kv_lora_rank == 512 and f.rope_dim == 64
    assert f.k_per_token(0) == 576 and f.v_per_token(0) == 0
    assert (f.n_expert, f.n_expert_used, f.n_expert_shared, f.n_ff_exp) == (64, 6, 2, 1408)


def test_old_deepseek2_without_mla_keys_caches_full_heads(tmp_path: Path) -> None:
    # GGUFs converted before llama.cpp's MLA cache: K and V per head, like any attention
    f = facts_from_file(write_metadata_gguf(tmp_path / "d.gguf", "deepseek2", {
        **BASE, "block_count": 2, "attention.head_count": 16, "attention.head_count_kv": 16,
        "attention.kv_lora_rank": 512, "rope.dimension_count": 64, "attention.key_length": 192,
        "attention.value_length": 128}))
    assert not f.is_mla
    assert f.k_per_token(0) == 16 * 192 and f.v_per_token(0) == 16 * 128


def test_qwen3moe_expert_counts(tmp_path: Path) -> None:
    f = facts_from_file(write_tiny_arch(tmp_path / "m.gguf", TinyArchSpec(arch="qwen3moe", n_expert=8, n_expert_used=2)))
    assert f.is_moe and (f.n_expert, f.n_expert_used, f.n_ff_exp) == (8, 2, 64)
    exps = [t for t in f.tensors if "_exps" in t.name]
    assert exps and exps[0].shape[2] == 8


def test_qwen3next_hybrid_recurrent_layers_and_state_sizes(tmp_path: Path) -> None:
    f = facts_from_file(write_metadata_gguf(tmp_path / "q.gguf", "qwen3next", {
        **BASE, "block_count": 8, "full_attention_interval": 4, "ssm.conv_kernel": 4, "ssm.inner_size": 512,
        "ssm.state_size": 64, "ssm.group_count": 4, "ssm.time_step_rank": 8}))
    assert f.recurrent_layers == (True, True, True, False) * 2
    assert [il for il in range(8) if f.has_kv(il)] == [3, 7]
    assert f.recurrent_r_per_seq == 3 * (512 + 2 * 4 * 64)
    assert f.recurrent_s_per_seq == 64 * 512


def test_qwen35_explicit_recurrent_layers_and_mtp(tmp_path: Path) -> None:
    f = facts_from_file(write_metadata_gguf(tmp_path / "q.gguf", "qwen35moe", {
        **BASE, "block_count": 5, "nextn_predict_layers": 1, "full_attention_interval": 2,
        "ssm.conv_kernel": 4, "ssm.inner_size": 256, "ssm.state_size": 32, "ssm.group_count": 2}))
    assert f.n_layer == 4 and f.n_layer_nextn == 1 and f.has_mtp
    assert f.recurrent_layers == (True, False, True, False, False)  # the MTP layer is attention


def test_missing_architecture_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FactsError, match="block_count"):
        facts_from_file(path)


def test_refs() -> None:
    assert parse_ref("hf://acme/m-GGUF/sub/m-Q4_K_M.gguf@v1") == HFRef("acme/m-GGUF", "sub/m-Q4_K_M.gguf", "v1")
    assert parse_ref("hf://acme/m-GGUF/m.gguf") == HFRef("acme/m-GGUF", "m.gguf", "main")
    with pytest.raises(RefError, match="hf://owner/repo"):
        parse_ref("hf://acme/only-repo")
    with pytest.raises(RefError, match="no such file"):
        parse_ref("/nonexistent/file.gguf")


def test_inspect_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tiny_llama(tmp_path / "t.gguf")
    assert main(["gguf", "inspect", str(path), "--ctx", "1000", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
                 "--parallel", "1", "--ubatch", "256", "--flash-attn", "on", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    est = data["estimate"]
    for key in ("weights", "kv", "recurrent", "output", "compute", "overhead", "total"):
        assert isinstance(est[key], int)
    assert est["kv"] == 1024 * 2 * 2 * 64 // 32 * 34  # ctx 1000 -> 1024 cells, 2 layers, K+V q8_0
    assert est["total"] == sum(est[k] for k in ("weights", "kv", "recurrent", "output", "compute", "mtp", "mmproj", "overhead"))
    assert data["facts"]["architecture"] == "llama" and data["facts"]["n_layer"] == 2


def test_inspect_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tiny_arch(tmp_path / "g.gguf", TinyArchSpec(arch="gemma3"))
    assert main(["gguf", "inspect", str(path), "--ctx", "4096"]) == 0
    out = capsys.readouterr().out
    assert "sliding window 256 on 5 of 6 layers" in out and "compute" in out


def test_inspect_hf_ref_reads_the_header_over_http(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fakehub import FakeHub

    path = write_tiny_llama(tmp_path / "t.gguf")
    with FakeHub() as hub:
        commit = hub.add_repo("acme/tiny-GGUF", {"t.gguf": path})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main(["gguf", "inspect", f"hf://acme/tiny-GGUF/t.gguf@{commit}", "--json"]) == 0
        assert hub.requests, "the header came from the fake Hub"
    data = json.loads(capsys.readouterr().out)
    assert data["facts"]["weights_bytes"] == facts_from_file(path).weights_bytes


def test_inspect_bad_ref_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gguf", "inspect", "hf://nope"]) == 2
    assert "hf://owner/repo" in capsys.readouterr().err


def test_tiny_deepseek2_and_qwen35_writers(tmp_path: Path) -> None:
    ds = facts_from_file(write_tiny_arch(tmp_path / "d.gguf", TinyArchSpec(arch="deepseek2", n_layer=3)))
    assert ds.is_mla and ds.n_head_kv == (1, 1, 1) and ds.k_per_token(0) == 64 + 32
    assert (ds.head_dim_k_mla, ds.head_dim_v_mla, ds.n_expert_shared) == (64, 32, 1)
    q = facts_from_file(write_tiny_arch(tmp_path / "q.gguf", TinyArchSpec(arch="qwen35", n_layer=4, mtp_layers=1)))
    assert q.recurrent_layers == (True, True, True, False, False) and q.n_layer_nextn == 1
    assert any(t.name == "blk.4.nextn.eh_proj.weight" for t in q.tensors)
