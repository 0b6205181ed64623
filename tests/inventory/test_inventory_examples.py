"""The example inventory: every host loads, and the committed JSON Schemas are current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from homelab.inventory import (
    check_recipe_file,
    list_hosts,
    list_recipes,
    load_host,
    schemas,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_examples_are_there() -> None:
    assert {"local", "xtx", "duo3060"} <= set(list_hosts(REPO))


@pytest.mark.parametrize("name", list_hosts(REPO))
def test_every_example_host_loads(name: str) -> None:
    host = load_host(name, REPO)
    # an RPC worker may serve no models of its own (it runs only rpc-server)
    assert host.name == name and (host.models or host.host.rpc_server is not None)


@pytest.mark.parametrize("name", list_recipes(REPO))
def test_every_example_recipe_validates_on_its_own(name: str) -> None:
    assert check_recipe_file(REPO / "recipes" / f"{name}.yaml").name == name


def test_xtx_is_the_rx_7900_xtx_homelab() -> None:
    host = load_host("xtx", REPO)
    assert host.host.backend == "hip" and host.host.vram_budget == 0.93
    assert [(g.vram_mib, g.arch) for g in host.host.gpus] == [(24560, "gfx1100")]
    assert [m.id for m in host.models] == [
        "qwen3.6-35b-a3b",
        "qwen3.6-35b-a3b-mtp",
        "qwen3.6-27b",
        "mistral-small-3.2-24b",
        "qwen3.5-9b",
        "glm-4.7-flash",
    ]
    big = host.model("qwen3.6-35b-a3b")
    assert big.source.hf is not None and big.source.hf.file.endswith("IQ4_XS.gguf")
    assert big.server["ctx-size"] == 102400 and big.server["cache-type-k"] == "q4_0"
    assert big.server["flash-attn"] == "on"
    assert set(big.profiles) == {"agent", "code", "thinking", "chat"}
    assert host.model("mistral-small-3.2-24b").server["ctx-size"] == 92160
    assert host.model("qwen3.5-9b").server["ctx-size"] == 122880
    glm = host.model("glm-4.7-flash")
    assert glm.server["ctx-size"] == 65536 and glm.server["parallel"] == 1


def test_duo3060_is_the_voice_pattern() -> None:
    host = load_host("duo3060", REPO)
    assert host.host.backend == "cuda" and [g.vram_mib for g in host.host.gpus] == [12288, 12288]
    chat, small, big = host.model("chat-small"), host.model("think-small"), host.model("think-big")
    assert chat.gpus == (0,) and chat.server["ctx-size"] == 4096 and chat.server["cache-type-k"] == "f16"
    assert chat.source.hf is not None and chat.source.hf.file.endswith("Q4_K_M.gguf")
    assert small.recipe is big.recipe or small.recipe == big.recipe
    assert small.source.hf is not None and small.source.hf.file.endswith("UD-Q4_K_XL.gguf")
    assert small.server["ctx-size"] == 8192 and small.server["tensor-split"] == "1,1.5"
    assert big.server["ctx-size"] == 98304 and big.server["cache-type-v"] == "q4_0"
    assert host.sets == {"voice": "chat-small & think-small", "coding": "think-big"}


def test_local_is_a_cpu_newcomer_box() -> None:
    host = load_host("local", REPO)
    assert host.host.backend == "cpu" and host.host.runtime.listen.startswith("127.0.0.1:")
    (model,) = host.models
    assert model.source.hf is not None and model.source.hf.repo == "unsloth/Qwen3-0.6B-GGUF"


@pytest.mark.parametrize(
    "path", sorted((REPO / "hosts").glob("*.yaml")) + sorted((REPO / "recipes").glob("*.yaml")), ids=str
)
def test_example_files_point_editors_at_the_schema(path: Path) -> None:
    kind = "host" if path.parent.name == "hosts" else "recipe"
    first = path.read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=../schemas/{kind}.schema.json"
    assert (path.parent / f"../schemas/{kind}.schema.json").resolve().is_file()


def test_committed_json_schemas_are_current() -> None:
    assert schemas.stale(REPO / "schemas") == [], "run `homelab schema --write` and commit schemas/"


@pytest.mark.parametrize(
    "path", sorted((REPO / "hosts").glob("*.yaml")) + sorted((REPO / "recipes").glob("*.yaml")), ids=str
)
def test_example_files_validate_against_the_json_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    kind = "host" if path.parent.name == "hosts" else "recipe"
    schema = json.loads((REPO / "schemas" / f"{kind}.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_json_schema_rejects_a_typo() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "schemas" / "host.schema.json").read_text())
    data = yaml.safe_load((REPO / "hosts" / "xtx.yaml").read_text())
    data["models"][0]["sever"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_json_schema_offers_flag_names_for_completion() -> None:
    schema = json.loads((REPO / "schemas" / "recipe.schema.json").read_text())
    assert "ctx-size" in schema["properties"]["server"]["properties"]
