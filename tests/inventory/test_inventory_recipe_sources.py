"""Recipes by name, by path and by URL pinned with sha256 (a real HTTP server on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from inventory_testkit import Inventory

from homelab.inventory import InventoryError, load_host, load_recipe
from homelab.settings import state_dir

RECIPE = """\
name: shared-qwen
description: a recipe someone shared
source:
  hf: {repo: unsloth/Qwen3-0.6B-GGUF, file: Qwen3-0.6B-Q8_0.gguf}
server:
  ctx-size: 4096
profiles:
  chat: {temperature: 0.7}
"""


class RecipeServer:
    """Serves files from a folder on 127.0.0.1 and counts the requests it got."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.requests.append(self.path)
                path = outer.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def recipe_server(tmp_path: Path) -> Iterator[RecipeServer]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "shared.yaml").write_text(RECIPE)
    server = RecipeServer(root)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


SHA = hashlib.sha256(RECIPE.encode()).hexdigest()


def use_recipe(inventory: Inventory, ref: str, sha256: str | None = None) -> int:
    """Make the local host's model use ``ref``; returns the line of ``recipe:``."""
    pin = f"\n    sha256: {sha256}" if sha256 else ""
    return inventory.edit_host("local", "  - recipe: qwen3-0.6b", f"  - recipe: {ref}{pin}")


def test_recipe_by_url_with_the_right_sha256_loads_and_is_cached(
    inventory: Inventory, recipe_server: RecipeServer
) -> None:
    use_recipe(inventory, recipe_server.url("shared.yaml"), SHA)
    model = load_host("local", inventory.root).models[0]
    assert model.id == "shared-qwen" and model.server["ctx-size"] == 4096
    assert model.recipe_ref == recipe_server.url("shared.yaml")
    cached = state_dir() / "recipes" / f"{SHA}.yaml"
    assert model.recipe_file == cached and cached.read_text() == RECIPE
    assert recipe_server.requests == ["/shared.yaml"]


def test_a_cached_recipe_costs_no_request(inventory: Inventory, recipe_server: RecipeServer) -> None:
    use_recipe(inventory, recipe_server.url("shared.yaml"), SHA)
    load_host("local", inventory.root)
    load_host("local", inventory.root)
    (recipe_server.root / "shared.yaml").unlink()  # even gone upstream, the pinned copy serves
    assert load_host("local", inventory.root).models[0].id == "shared-qwen"
    assert recipe_server.requests == ["/shared.yaml"]


def test_a_corrupted_cache_entry_is_downloaded_again(inventory: Inventory, recipe_server: RecipeServer) -> None:
    use_recipe(inventory, recipe_server.url("shared.yaml"), SHA)
    load_host("local", inventory.root)
    (state_dir() / "recipes" / f"{SHA}.yaml").write_text("tampered")
    assert load_host("local", inventory.root).models[0].id == "shared-qwen"
    assert recipe_server.requests == ["/shared.yaml", "/shared.yaml"]


def test_a_wrong_sha256_is_refused_with_expected_and_actual(
    inventory: Inventory, recipe_server: RecipeServer
) -> None:
    wrong = "0" * 63 + "a"
    line = use_recipe(inventory, recipe_server.url("shared.yaml"), wrong)
    with pytest.raises(InventoryError) as caught:
        load_host("local", inventory.root)
    message = str(caught.value)
    assert message.startswith(f"{inventory.host_path('local')}:{line}: models[0].recipe: ")
    assert f"expected sha256 {wrong}, got {SHA}" in message
    assert not (state_dir() / "recipes" / f"{wrong}.yaml").exists()
    assert not (state_dir() / "recipes" / f"{SHA}.yaml").exists()


def test_a_url_without_sha256_prints_the_hash_to_pin(inventory: Inventory, recipe_server: RecipeServer) -> None:
    line = use_recipe(inventory, recipe_server.url("shared.yaml"))
    with pytest.raises(InventoryError) as caught:
        load_host("local", inventory.root)
    message = str(caught.value)
    assert message.startswith(f"{inventory.host_path('local')}:{line}: models[0].recipe: ")
    assert f"add `sha256: {SHA}`" in message


def test_a_missing_url_is_reported_at_the_entry(inventory: Inventory, recipe_server: RecipeServer) -> None:
    line = use_recipe(inventory, recipe_server.url("gone.yaml"), "f" * 64)
    with pytest.raises(InventoryError) as caught:
        load_host("local", inventory.root)
    assert f":{line}: models[0].recipe: downloading " in str(caught.value)
    assert "HTTP 404" in str(caught.value)


def test_errors_in_a_url_recipe_name_the_url_and_line(inventory: Inventory, recipe_server: RecipeServer) -> None:
    broken = RECIPE.replace("  ctx-size: 4096", "  ctx-sise: 4096")
    (recipe_server.root / "broken.yaml").write_text(broken)
    use_recipe(inventory, recipe_server.url("broken.yaml"), hashlib.sha256(broken.encode()).hexdigest())
    with pytest.raises(InventoryError) as caught:
        load_host("local", inventory.root)
    assert f"{recipe_server.url('broken.yaml')}:6: server.ctx-sise: unknown llama-server flag" in str(caught.value)


def test_recipe_by_path_relative_to_the_host_file(inventory: Inventory, tmp_path: Path) -> None:
    shared = inventory.root / "shared"
    shared.mkdir()
    (shared / "mine.yaml").write_text(RECIPE)
    use_recipe(inventory, "../shared/mine.yaml")
    model = load_host("local", inventory.root).models[0]
    assert model.id == "shared-qwen" and model.recipe_file == (shared / "mine.yaml").resolve()


def test_recipe_by_absolute_path_pinned_by_sha256(inventory: Inventory, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(RECIPE)
    use_recipe(inventory, str(elsewhere), SHA)
    assert load_host("local", inventory.root).models[0].id == "shared-qwen"
    elsewhere.write_text(RECIPE + "tags: [changed]\n")
    with pytest.raises(InventoryError, match="does not match its pin: expected sha256"):
        load_host("local", inventory.root)


def test_a_missing_recipe_path_is_an_error_at_the_entry(inventory: Inventory) -> None:
    line = use_recipe(inventory, "../shared/nope.yaml")
    with pytest.raises(InventoryError) as caught:
        load_host("local", inventory.root)
    assert str(caught.value).startswith(f"{inventory.host_path('local')}:{line}: models[0].recipe: recipe file not found")


def test_load_recipe_three_ways(inventory: Inventory, recipe_server: RecipeServer, tmp_path: Path) -> None:
    by_name, file = load_recipe(inventory.root, "qwen3-0.6b")
    assert by_name.name == "qwen3-0.6b" and file == inventory.recipe_path("qwen3-0.6b").resolve()
    (tmp_path / "x.yaml").write_text(RECIPE)
    assert load_recipe(inventory.root, "x.yaml", base=tmp_path)[0].name == "shared-qwen"
    assert load_recipe(inventory.root, recipe_server.url("shared.yaml"), sha256=SHA)[0].name == "shared-qwen"
