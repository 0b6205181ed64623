"""``draft:`` (speculative decoding's draft model) in recipes and host entries: merged like the
other keys, refused with file, line, key and fix where it cannot work."""

from __future__ import annotations

import pytest
from inventory_testkit import Inventory

from homelab.inventory import InventoryError, load_host

DRAFT_LINE = "    draft:                      # speculative decoding: the 0.6B (same vocabulary) drafts, the 4B checks\n"
DRAFT_HF = "      hf: {repo: unsloth/Qwen3-0.6B-GGUF, file: Qwen3-0.6B-Q8_0.gguf}\n"


def load_error(inventory: Inventory, host: str) -> str:
    with pytest.raises(InventoryError) as caught:
        load_host(host, inventory.root)
    return str(caught.value)


def test_the_example_host_entry_declares_a_draft(inventory: Inventory) -> None:
    host = load_host("duo3060", inventory.root)
    small = host.model("chat-small")
    assert small.draft is not None and small.draft.hf is not None
    assert (small.draft.hf.repo, small.draft.hf.file) == ("unsloth/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf")
    assert small.as_dict()["draft"] == {"hf": {"repo": "unsloth/Qwen3-0.6B-GGUF", "file": "Qwen3-0.6B-Q8_0.gguf"}}
    assert host.model("think-big").draft is None and host.model("think-big").as_dict()["draft"] is None


def test_a_recipe_draft_is_inherited_replaced_or_turned_off(inventory: Inventory) -> None:
    inventory.edit_recipe(
        "qwen3-4b-instruct-2507", "\nserver:", "\ndraft: {url: {url: 'https://example.org/d.gguf'}}\nserver:"
    )
    # rig4090 uses the recipe as it is: the recipe's draft
    chat = load_host("rig4090", inventory.root).model("chat-4b")
    assert chat.draft is not None and chat.draft.url is not None
    # duo3060's entry names its own
    assert load_host("duo3060", inventory.root).model("chat-small").draft.hf is not None  # type: ignore[union-attr]
    inventory.edit_host("duo3060", DRAFT_LINE + DRAFT_HF, "    draft: false\n")
    assert load_host("duo3060", inventory.root).model("chat-small").draft is None


def test_a_draft_with_a_projector_or_two_sources_names_the_line(inventory: Inventory) -> None:
    path = inventory.host_path("duo3060")
    line = inventory.edit_host("duo3060", DRAFT_HF, DRAFT_HF.replace("}", ", mmproj: mmproj-F16.gguf}"))
    message = load_error(inventory, "duo3060")
    assert f"{path}:{line - 1}: models[0].draft: a draft model takes no mmproj" in message
    inventory.edit_host("duo3060", ", mmproj: mmproj-F16.gguf}", "}\n      path: {path: /m/d.gguf}")
    assert "models[0].draft: draft needs exactly one of 'hf', 'url' or 'path' (got hf, path)" in load_error(
        inventory, "duo3060"
    )


@pytest.mark.parametrize("flag", ["spec-draft-model", "model-draft", "spec-draft-hf", "hf-repo-draft"])
def test_draft_flags_in_server_are_refused_with_the_draft_key(inventory: Inventory, flag: str) -> None:
    line = inventory.edit_host("duo3060", "spec-draft-n-max: 8}", f"spec-draft-n-max: 8, {flag}: /m/d.gguf}}")
    message = load_error(inventory, "duo3060")
    assert f"{inventory.host_path('duo3060')}:{line}: models[0].server.{flag}: flag '{flag}' is set by homelab" in message
    assert "declare it as `draft:`" in message


def test_spec_type_and_draft_must_agree(inventory: Inventory) -> None:
    host_file = inventory.host_path("duo3060")
    # a type that drafts with a model file, on a model without a draft
    line = inventory.edit_host("duo3060", "    server: {ctx-size: 98304,", "    server: {spec-type: draft-simple, ctx-size: 98304,")
    message = load_error(inventory, "duo3060")
    assert f"{host_file}:{line}: models[2].server.spec-type: spec-type 'draft-simple' drafts with a separate model" in message
    assert "has no `draft:`; declare one" in message
    inventory.edit_host("duo3060", "{spec-type: draft-simple, ctx-size: 98304,", "{ctx-size: 98304,")
    # a draft the type never uses: llama-server would load it and not draft
    line = inventory.edit_host("duo3060", "spec-draft-n-max: 8}", "spec-draft-n-max: 8, spec-type: ngram-mod}")
    message = load_error(inventory, "duo3060")
    assert f"{host_file}:{line}: models[0].server.spec-type: model 'chat-small' has a `draft:` but spec-type 'ngram-mod' never uses it" in message
    # a draft type beside an ngram type is fine
    inventory.edit_host("duo3060", "spec-type: ngram-mod}", "spec-type: 'draft-simple,ngram-mod'}")
    assert load_host("duo3060", inventory.root).model("chat-small").server["spec-type"] == "draft-simple,ngram-mod"


def test_a_recipe_spec_type_is_reported_in_the_recipe(inventory: Inventory) -> None:
    line = inventory.edit_recipe("qwen3-4b-instruct-2507", "\nserver:\n", "\nserver:\n  spec-type: draft-eagle3\n") + 2  # old starts on the line before
    message = load_error(inventory, "rig4090")
    assert f"{inventory.recipe_path('qwen3-4b-instruct-2507')}:{line}: server.spec-type: spec-type 'draft-eagle3'" in message
