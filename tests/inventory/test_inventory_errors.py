"""One test per class of inventory error: a real host file, broken in a temp inventory.

Each asserts the message names the file and the line (``path:LINE:``), the key path, and the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from inventory_testkit import Inventory

from homelab.errors import HomelabError
from homelab.inventory import InventoryError, flagnames, load_host


def load_error(inventory: Inventory, host: str) -> str:
    with pytest.raises(InventoryError) as caught:
        load_host(host, inventory.root)
    assert isinstance(caught.value, HomelabError) and caught.value.exit_code == 2
    return str(caught.value)


def assert_line(message: str, path: Path, line: int, *fragments: str) -> None:
    """One line of ``message`` names ``path:line:`` and contains every fragment."""
    prefix = f"{path}:{line}: "
    hits = [m for m in message.splitlines() if m.startswith(prefix)]
    assert hits, f"no problem at {prefix!r} in:\n{message}"
    assert any(all(f in hit for f in fragments) for hit in hits), f"{fragments} not in:\n{message}"


# -- schema errors (pydantic, mapped to lines) ---------------------------------------------------


def test_unknown_key_names_nearest_valid_key(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "    server: {ctx-size: 92160,", "    sever: {ctx-size: 92160,")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[3]: unknown key 'sever'", "did you mean 'server'?")


def test_unknown_key_in_nested_mapping_uses_aliases(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "mtp: {draft-n-max: 2}", "mtp: {draft_max: 2}")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[1].mtp: unknown key 'draft_max'", "'draft-n-max'")


def test_wrong_type_names_expected_type(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "vram_mib: 24560", "vram_mib: 24GB")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "gpus[0].vram_mib: expected an integer, got '24GB'")


def test_wrong_choice_suggests_the_valid_one(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "kind: supervisor", "kind: supervisr")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "runtime.kind: expected one of", "did you mean 'supervisor'?")


def test_missing_required_key(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "backend: hip\n", "")
    message = load_error(inventory, "xtx")
    # reported at the document start: line 2 is the first key (line 1 is the schema comment)
    assert line == 5
    assert_line(message, inventory.host_path("xtx"), 2, "missing required key 'backend'")


def test_yaml_syntax_error_has_file_and_line(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "    server: {ctx-size: 122880}", "    server: {ctx-size: 122880")
    message = load_error(inventory, "xtx")
    assert f"{inventory.host_path('xtx')}:" in message and "YAML syntax error" in message
    reported = int(message.split(":")[1])
    assert line <= reported <= line + 2


def test_duplicate_yaml_key(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "vram_budget: 0.93", "vram_budget: 0.93\nvram_budget: 0.9")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line + 1, "duplicate key 'vram_budget'", f"line {line}")


def test_several_errors_are_all_reported_one_per_line(inventory: Inventory) -> None:
    first = inventory.edit_host("xtx", "vram_mib: 24560", "vram_mib: lots")
    second = inventory.edit_host("xtx", "kind: supervisor", "kind: nope")
    message = load_error(inventory, "xtx")
    lines = message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{inventory.host_path('xtx')}:{first}: ")
    assert lines[1].startswith(f"{inventory.host_path('xtx')}:{second}: ")


# -- cross checks ------------------------------------------------------------------------------


def test_unknown_recipe_lists_near_names(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "- recipe: qwen3.6-27b", "- recipe: qwen3.6-27")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[2].recipe: unknown recipe 'qwen3.6-27'", "did you mean 'qwen3.6-27b'?")


def test_duplicate_model_id(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "id: qwen3.6-35b-a3b-mtp", "id: qwen3.6-35b-a3b")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[1].id: model ID 'qwen3.6-35b-a3b' is already the ID of models[0] (line 19)")


def test_alias_colliding_with_a_model_id(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "aliases: [qwen3.6]", "aliases: [qwen3.5-9b]")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[0].aliases[0]: alias 'qwen3.5-9b' is already the ID of models[4]")


def test_duplicate_alias_across_models(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "  - recipe: glm-4.7-flash", "  - recipe: glm-4.7-flash\n    aliases: [qwen3.6]")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line + 1, "alias 'qwen3.6' is already an alias of models[0] (line 21)")


def test_alias_colliding_with_a_profile_id(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "  - recipe: glm-4.7-flash", "  - recipe: glm-4.7-flash\n    aliases: ['qwen3.6-27b:code']")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line + 1, "alias 'qwen3.6-27b:code' is already the profile ID of models[2]")


def test_host_profile_not_in_recipe(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "profiles: [agent, code]\n", "profiles: [agent, coding]\n")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[1].profiles[1]: recipe 'qwen3.6-35b-a3b' has no profile 'coding'", "did you mean 'code'?")


def test_set_naming_an_unknown_model(inventory: Inventory) -> None:
    line = inventory.edit_host("duo3060", 'voice: "chat-small & think-small"', 'voice: "chat-small & thinksmall"')
    message = load_error(inventory, "duo3060")
    assert_line(message, inventory.host_path("duo3060"), line, "sets.voice: set 'voice' names unknown model 'thinksmall'", "did you mean 'think-small'?")


def test_set_with_a_syntax_error(inventory: Inventory) -> None:
    line = inventory.edit_host("duo3060", 'coding: "think-big"', 'coding: "(think-big"')
    message = load_error(inventory, "duo3060")
    assert_line(message, inventory.host_path("duo3060"), line, "sets.coding:", "'(think-big'")


def test_hip_needs_a_gfx_arch(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "arch: gfx1100", "arch: '86'")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "gpus[0].arch: '86' is not a ROCm target for backend hip", "gfx1100")


@pytest.mark.parametrize("arch", ["gfx1030", "8", "ampere"])
def test_cuda_needs_an_sm_number(inventory: Inventory, arch: str) -> None:
    text = inventory.host_path("duo3060").read_text().replace('arch: "86"', f'arch: "{arch}"', 1)
    inventory.host_path("duo3060").write_text(text)
    message = load_error(inventory, "duo3060")
    assert_line(message, inventory.host_path("duo3060"), 7, f"gpus[0].arch: '{arch}' is not a CUDA compute capability")


@pytest.mark.parametrize("arch", ["86", "8.6", "sm_86"])
def test_cuda_arch_spellings_are_accepted(inventory: Inventory, arch: str) -> None:
    path = inventory.host_path("duo3060")
    path.write_text(path.read_text().replace('arch: "86"', f'arch: "{arch}"'))
    assert load_host("duo3060", inventory.root).host.gpus[0].arch == arch


def test_gpu_index_out_of_range(inventory: Inventory) -> None:
    line = inventory.edit_host("duo3060", "gpus: [0]", "gpus: [2]")
    message = load_error(inventory, "duo3060")
    assert_line(message, inventory.host_path("duo3060"), line, "models[0].gpus[0]: GPU index 2 is out of range", "indices 0-1")


def test_unknown_server_flag_suggests_the_real_one(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx_size: 122880}")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[4].server.ctx_size: unknown llama-server flag 'ctx_size'", "did you mean 'ctx-size'?")


def test_unknown_flag_in_a_recipe_is_reported_in_the_recipe(inventory: Inventory) -> None:
    line = inventory.edit_recipe("glm-4.7-flash", "  parallel: 1", "  paralel: 1")
    message = load_error(inventory, "xtx")
    recipe = inventory.recipe_path("glm-4.7-flash").resolve()
    assert_line(message, recipe, line, "server.paralel: unknown llama-server flag", "did you mean 'parallel'?")


def test_flag_check_is_skipped_without_a_snapshot(
    inventory: Inventory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(flagnames, "SNAPSHOT_DIR", tmp_path / "no-snapshots")
    inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx-size: 122880, brand-new-flag: 1}")
    host = load_host("xtx", inventory.root)
    assert host.model("qwen3.5-9b").server["brand-new-flag"] == 1


def test_flag_check_uses_the_snapshot_of_the_hosts_ref(
    inventory: Inventory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    flags = (flagnames.SNAPSHOT_DIR / "server_flags_b11434.txt").read_text()
    (snapshots / "server_flags_b11434.txt").write_text(flags)
    (snapshots / "server_flags_b99999.txt").write_text(flags + "brand-new-flag\n")
    monkeypatch.setattr(flagnames, "SNAPSHOT_DIR", snapshots)
    inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx-size: 122880, brand-new-flag: 1}")
    assert "unknown llama-server flag 'brand-new-flag'" in load_error(inventory, "xtx")
    inventory.edit_host("xtx", "ref: b11434", "ref: b99999")
    assert load_host("xtx", inventory.root).model("qwen3.5-9b").server["brand-new-flag"] == 1


def test_spec_type_mtp_is_refused_with_draft_mtp_suggested(inventory: Inventory) -> None:
    # b11434 exits with "unknown speculative type: mtp"; validate says so first
    line = inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx-size: 122880, spec-type: mtp}")
    message = load_error(inventory, "xtx")
    assert_line(
        message,
        inventory.host_path("xtx"),
        line,
        "models[4].server.spec-type: server flag 'spec-type' value 'mtp' is not one of none, draft-simple",
        "did you mean 'draft-mtp'?",
    )


@pytest.mark.parametrize(
    ("flag", "value", "bad", "nearest"),
    [
        ("cache-type-k", "q8", "'q8'", "q8_0"),
        ("cache-type-v", "Q4_0", "'Q4_0'", "q4_0"),
        ("split-mode", "rows", "'rows'", "row"),
        ("flash-attn", "auto-on", "'auto-on'", "auto"),
        ("reasoning-format", "deepseek_legacy", "'deepseek_legacy'", "deepseek-legacy"),
        ("spec-type", "draft-mtp,ngram-mods", "'ngram-mods'", "ngram-mod"),
    ],
)
def test_enumerated_flag_values_are_checked_against_the_refs_help(
    inventory: Inventory, flag: str, value: str, bad: str, nearest: str
) -> None:
    line = inventory.edit_host("xtx", "server: {ctx-size: 122880}", f"server: {{ctx-size: 122880, {flag}: '{value}'}}")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, f"server.{flag}:", f"value {bad} is not one of", f"'{nearest}'")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("spec-type", "draft-mtp,ngram-mod"), ("reasoning-format", "auto"), ("split-mode", "tensor"), ("cache-type-k", "iq4_nl")],
)
def test_allowed_values_pass(inventory: Inventory, flag: str, value: str) -> None:
    inventory.edit_host("xtx", "server: {ctx-size: 122880}", f"server: {{ctx-size: 122880, {flag}: '{value}'}}")
    assert load_host("xtx", inventory.root).model("qwen3.5-9b").server[flag] == value


def test_flags_homelab_sets_itself_are_refused(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx-size: 122880, port: 8080}")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "models[4].server.port: flag 'port' is set by homelab")


def test_ctx_size_must_be_tokens_or_auto(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx-size: 120k}")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "ctx-size must be a number of tokens or 'auto'")


def test_recipe_schema_error_names_the_recipe_file(inventory: Inventory) -> None:
    line = inventory.edit_recipe("qwen3.5-9b", "  hf: {repo:", "  hf: {rep:")
    message = load_error(inventory, "xtx")
    recipe = inventory.recipe_path("qwen3.5-9b").resolve()
    assert_line(message, recipe, line, "source.hf: unknown key 'rep'", "did you mean 'repo'?")


def test_recipe_name_must_match_its_file(inventory: Inventory) -> None:
    line = inventory.edit_recipe("qwen3.5-9b", "name: qwen3.5-9b", "name: qwen-9b")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.recipe_path("qwen3.5-9b").resolve(), line, "name: the recipe is named 'qwen-9b'")


def test_host_name_must_match_its_file(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "name: xtx", "name: xtx2")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "name: the host is named 'xtx2'", "name: xtx")


def test_preload_of_an_unknown_model(inventory: Inventory) -> None:
    line = inventory.edit_host("xtx", "  service: user", "  service: user\n  preload: [glm-4.7]")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line + 1, "runtime.preload[0]: unknown model 'glm-4.7'", "did you mean 'glm-4.7-flash'?")


def test_unknown_host_lists_known_hosts(inventory: Inventory) -> None:
    message = load_error(inventory, "xtxx")
    assert "unknown host 'xtxx'" in message and "did you mean 'xtx'?" in message


def test_tensor_split_needs_one_share_per_gpu(inventory: Inventory) -> None:
    line = inventory.edit_host("duo3060", 'tensor-split: "1,1.5"', 'tensor-split: "1,1.5,2"')
    message = load_error(inventory, "duo3060")
    assert_line(message, inventory.host_path("duo3060"), line, "models[1].server.tensor-split: tensor-split '1,1.5,2'", "(2 here)")


def test_a_patch_that_is_not_in_patches(inventory: Inventory) -> None:
    (inventory.root / "patches" / "mtp-fix.patch").write_text("--- a/x\n+++ b/x\n")
    line = inventory.edit_host("xtx", "  patches: []", "  patches:\n    - mtp-fix.patch\n    - mtp-fx.patch\n    - {pr: 12345}")
    message = load_error(inventory, "xtx")
    assert message.count("\n") == 0, message
    assert_line(message, inventory.host_path("xtx"), line + 2, "llama_cpp.patches[1]: no patch patches/mtp-fx.patch", "did you mean 'mtp-fix.patch'?")


def test_tensor_split_is_the_plans_when_a_model_uses_rpc_workers(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "cache-type-v: q8_0}", 'cache-type-v: q8_0, tensor-split: "1,1"}')
    message = load_error(inventory, "rig4090")
    assert_line(message, inventory.host_path("rig4090"), line, "models[1].server.tensor-split:",
                "split over rpc workers (rpc3090)", "tensor-split: null")


@pytest.mark.parametrize(("arch", "shown"), [("61", "6.1"), ("7.0", "7.0"), ("sm_52", "5.2")])
def test_cuda_archs_below_turing_are_refused_for_cuda_13(inventory: Inventory, arch: str, shown: str) -> None:
    path = inventory.host_path("duo3060")
    path.write_text(path.read_text().replace('arch: "86"', f'arch: "{arch}"', 1))
    message = load_error(inventory, "duo3060")
    assert_line(
        message, path, 7, f"gpus[0].arch: '{arch}' (compute capability {shown}) cannot be built with CUDA 13",
        "lowest: 7.5", "backend: vulkan",
    )
