"""Host entries override their recipe per model."""

from __future__ import annotations

from pathlib import Path

from inventory_testkit import Inventory

from homelab.inventory import HostModel, Recipe, load_host
from homelab.inventory.loader import merge_flags, merge_model

REPO = Path(__file__).resolve().parents[2]


def recipe(**extra: object) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "r",
            "source": {"hf": {"repo": "o/r-GGUF", "file": "r.gguf"}},
            "server": {"ctx-size": 8192, "cache-type-k": "q8_0", "mlock": True, "jinja": True},
            "profiles": {"a": {"temperature": 0.1}, "b": {"temperature": 0.2}, "c": {"top_k": 3}},
            "aliases": ["r-alias"],
            "env": {"A": "1", "B": "2"},
            "ttl": 300,
            "mtp": {"draft-n-max": 3},
            **extra,
        }
    )


def entry(**fields: object) -> HostModel:
    return HostModel.model_validate({"recipe": "r", **fields})


def test_server_flags_merge_null_and_false_remove_and_new_flags_go_last() -> None:
    model = merge_model(
        entry(server={"ctx-size": 4096, "mlock": None, "jinja": False, "parallel": 2}), recipe(), None
    )
    assert model.server == {"ctx-size": 4096, "cache-type-k": "q8_0", "parallel": 2}
    assert list(model.server) == ["ctx-size", "cache-type-k", "parallel"]


def test_defaults_come_from_the_recipe() -> None:
    model = merge_model(entry(), recipe(), None)
    assert model.id == "r"
    assert list(model.profiles) == ["a", "b", "c"]
    assert model.aliases == ("r-alias",)
    assert model.ttl == 300
    assert model.mtp is not None and model.mtp.draft_n_max == 3
    assert model.env == {"A": "1", "B": "2"}
    assert model.gpus is None and model.port is None and model.preload is False


def test_entry_overrides_id_profiles_aliases_env_ttl_mtp() -> None:
    model = merge_model(
        entry(
            id="mine",
            profiles=["c", "a"],
            aliases=["extra", "r-alias"],
            env={"B": "3", "C": "4"},
            ttl=0,
            mtp={"draft-n-max": 2},
            gpus=[1],
            port=12000,
            preload=True,
        ),
        recipe(),
        None,
    )
    assert model.id == "mine"
    assert list(model.profiles) == ["c", "a"]  # the host's order
    assert model.profile_ids() == {"mine:c": {"top_k": 3}, "mine:a": {"temperature": 0.1}}
    assert model.aliases == ("r-alias", "extra")
    assert model.env == {"A": "1", "B": "3", "C": "4"}
    assert model.ttl == 0
    assert model.mtp is not None and model.mtp.draft_n_max == 2
    assert model.gpus == (1,) and model.port == 12000 and model.preload is True


def test_mtp_false_turns_the_recipes_mtp_off() -> None:
    assert merge_model(entry(mtp=False), recipe(), None).mtp is None


def test_ctx_size_auto_is_kept_for_the_plan(inventory: Inventory) -> None:
    inventory.edit_host("xtx", "server: {ctx-size: 122880}", "server: {ctx-size: auto}")
    assert load_host("xtx", inventory.root).model("qwen3.5-9b").server["ctx-size"] == "auto"


def test_merge_flags_is_pure() -> None:
    base = {"a": 1, "b": 2}
    assert merge_flags(base, {"b": None, "c": 3}) == {"a": 1, "c": 3}
    assert base == {"a": 1, "b": 2}


def test_one_recipe_two_entries_on_a_real_host() -> None:
    host = load_host("xtx", REPO)
    plain, mtp = host.model("qwen3.6-35b-a3b"), host.model("qwen3.6-35b-a3b-mtp")
    assert plain.source == mtp.source
    assert plain.server["ctx-size"] == 102400 and mtp.server["ctx-size"] == 65536
    assert mtp.server["cache-type-k"] == "q4_0"  # kept from the recipe
    assert plain.mtp is None and mtp.mtp is not None and mtp.mtp.draft_n_max == 2
    assert list(plain.profiles) == ["agent", "code", "thinking", "chat"]
    assert list(mtp.profiles) == ["agent", "code"]
    assert plain.aliases == ("qwen3.6",) and mtp.aliases == ()


def test_x_keys_hold_anchors_shared_by_entries(inventory: Inventory) -> None:
    path = inventory.host_path("xtx")
    path.write_text(
        path.read_text()
        .replace("models:\n", "x-long-q4: &long-q4 {ctx-size: 65536, cache-type-k: q4_0, cache-type-v: q4_0}\nmodels:\n")
        .replace(
            "  - recipe: qwen3.6-27b\n    server: {ctx-size: 65536, cache-type-k: q4_0, cache-type-v: q4_0}",
            "  - recipe: qwen3.6-27b\n    server: {<<: *long-q4, parallel: 2}",
        )
    )
    model = load_host("xtx", inventory.root).model("qwen3.6-27b")
    assert model.server["ctx-size"] == 65536 and model.server["cache-type-v"] == "q4_0"
    assert model.server["parallel"] == 2


def test_prompt_cache_comes_from_the_recipe_unless_the_entry_says_otherwise() -> None:
    assert merge_model(entry(), recipe(), None).prompt_cache is None  # the supervisor's default
    assert merge_model(entry(), recipe(prompt_cache=True), None).prompt_cache is True
    assert merge_model(entry(prompt_cache=False), recipe(prompt_cache=True), None).prompt_cache is False
