"""What a host file or a recipe may open up: listen addresses without keys, powers a recipe
tries to grant (by path and by URL), ssh options in ``address:``, YAML that expands without end."""

from __future__ import annotations

import hashlib

import pytest
from inventory_testkit import Inventory
from test_inventory_errors import assert_line, load_error
from test_inventory_recipe_sources import RecipeServer, recipe_server  # noqa: F401 - a fixture

from homelab.address import is_loopback
from homelab.inventory import load_host

# -- runtime.listen beyond loopback ----------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:12434", "192.168.1.20:12434", "xtx.lan:12434"])
def test_listen_beyond_loopback_without_a_key_is_refused(inventory: Inventory, listen: str) -> None:
    line = inventory.edit_host("xtx", "  listen: 127.0.0.1:12434", f"  listen: {listen}")
    message = load_error(inventory, "xtx")
    assert_line(
        message, inventory.host_path("xtx"), line, "runtime.listen:", "no API key guards it",
        "runtime.api_key_env: HOMELAB_API_KEYS", "runtime.allow_no_key: true",
    )  # fmt: skip


def test_listen_beyond_loopback_with_a_key_or_allow_no_key_loads(inventory: Inventory) -> None:
    inventory.edit_host("xtx", "  listen: 127.0.0.1:12434", "  listen: 0.0.0.0:12434\n  api_key_env: MY_KEYS")
    assert load_host("xtx", inventory.root).host.runtime.api_key_env == "MY_KEYS"
    inventory.edit_host("xtx", "  api_key_env: MY_KEYS", "  allow_no_key: true")
    assert load_host("xtx", inventory.root).host.runtime.allow_no_key is True


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.2", False), ("lan-box", False), ("localhost.evil.example", False)],
)  # fmt: skip
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


# -- recipes cannot grant powers -------------------------------------------------------------------


def test_a_recipe_turning_on_tools_is_refused_at_its_line(inventory: Inventory) -> None:
    line = inventory.edit_recipe("qwen3-0.6b", "  ctx-size: 8192", "  ctx-size: 8192\n  tools: all") + 1
    message = load_error(inventory, "local")
    assert_line(
        message, inventory.recipe_path("qwen3-0.6b"), line, "server.tools:", "shell commands",
        "a recipe cannot grant that", "models[0].server.tools",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "path", "fragment"),
    [
        ("server", "agent: true", "server.agent", "built-in tools"),
        ("server", "rpc: 10.0.0.9:50052", "server.rpc", "other machines"),
        ("server", "media-path: /etc", "server.media-path", "file:// URLs"),
        ("env", "LD_PRELOAD: /tmp/evil.so", "env.LD_PRELOAD", "load code"),
        ("env", "LD_LIBRARY_PATH: /tmp", "env.LD_LIBRARY_PATH", "load code"),
        ("env", "GCONV_PATH: /tmp", "env.GCONV_PATH", "load code"),
        ("env", "PYTHONPATH: /tmp", "env.PYTHONPATH", "load code"),
        ("env", "LLAMA_ARG_TOOLS: all", "env.LLAMA_ARG_TOOLS", "reads it as --tools"),
    ],
)
def test_powers_a_recipe_cannot_grant(inventory: Inventory, key: str, value: str, path: str, fragment: str) -> None:
    recipe = inventory.recipe_path("qwen3-0.6b")
    recipe.write_text(recipe.read_text() + f"{key}:\n  {value}\n")
    line = recipe.read_text().count("\n")
    message = load_error(inventory, "local")
    name = path.split(".", 1)[1]
    assert_line(message, recipe, line, f"{path}:", fragment, f"models[0].{key}.{name}")


def test_the_host_entry_may_grant_what_the_recipe_cannot(inventory: Inventory) -> None:
    recipe = inventory.recipe_path("qwen3-0.6b")
    recipe.write_text(recipe.read_text() + "env:\n  LD_LIBRARY_PATH: /opt/rocm/lib\n")
    inventory.edit_recipe("qwen3-0.6b", "  ctx-size: 8192", "  ctx-size: 8192\n  tools: read_file")
    inventory.edit_host(
        "local", "  - recipe: qwen3-0.6b",
        "  - recipe: qwen3-0.6b\n    server: {tools: read_file}\n    env: {LD_LIBRARY_PATH: /opt/rocm/lib}",
    )  # fmt: skip
    model = load_host("local", inventory.root).models[0]
    assert model.server["tools"] == "read_file" and model.env["LD_LIBRARY_PATH"] == "/opt/rocm/lib"


def test_turning_a_power_off_in_a_recipe_is_fine(inventory: Inventory) -> None:
    inventory.edit_recipe("qwen3-0.6b", "  ctx-size: 8192", "  ctx-size: 8192\n  agent: false")
    assert "agent" not in load_host("local", inventory.root).models[0].server


def test_a_recipe_fetched_by_url_cannot_grant_powers(inventory: Inventory, recipe_server: RecipeServer) -> None:  # noqa: F811
    text = (recipe_server.root / "shared.yaml").read_text().replace("  ctx-size: 4096", "  ctx-size: 4096\n  tools: all")
    (recipe_server.root / "evil.yaml").write_text(text)
    url = recipe_server.url("evil.yaml")
    inventory.edit_host(
        "local", "  - recipe: qwen3-0.6b", f"  - recipe: {url}\n    sha256: {hashlib.sha256(text.encode()).hexdigest()}"
    )
    message = load_error(inventory, "local")
    line = text.splitlines().index("  tools: all") + 1
    assert_line(message, url, line,  # type: ignore[arg-type]
                "server.tools:", "recipe 'shared-qwen' sets 'tools'", "models[0].server.tools")


# -- ssh option injection --------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["ssh://-oProxyCommand=touch%20x", "ssh://-oProxyCommand=x@host", "ssh://u@-oFoo=1:22"])
def test_an_address_that_ssh_would_read_as_an_option_is_refused(inventory: Inventory, address: str) -> None:
    line = inventory.edit_host("xtx", "address: local ", f"address: {address} ")
    message = load_error(inventory, "xtx")
    assert_line(message, inventory.host_path("xtx"), line, "address:", "cannot start with '-'")


# -- YAML that expands without end -----------------------------------------------------------------


def test_a_billion_laughs_host_file_is_refused_quickly(inventory: Inventory) -> None:
    levels = ["x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = inventory.host_path("xtx")
    path.write_text("\n".join(levels) + "\n" + path.read_text())
    message = load_error(inventory, "xtx")
    assert f"{path}:" in message and "expands to more than 100000 values" in message


def test_an_alias_inside_its_own_anchor_is_refused(inventory: Inventory) -> None:
    path = inventory.host_path("xtx")
    path.write_text("x-loop: &loop [*loop]\n" + path.read_text())
    message = load_error(inventory, "xtx")
    assert f"{path}:1:" in message and "deeper than 100 levels" in message
