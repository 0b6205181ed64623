"""Parsing llama-swap's config.yaml strictly: keys, macros, ports, aliases, groups, matrix, peers."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.errors import HomelabError
from homelab.matrix import group_evictions, solve
from homelab.supervisor.config import Config
from homelab.supervisor.config_load import (
    ConfigError,
    load_config,
    models_to_restart,
    parse_config,
)

DATA = Path(__file__).parent / "data"
SOURCE = Path("/etc/homelab/config.yaml")


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), SOURCE, env=env or {})


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    assert isinstance(caught.value, HomelabError)
    return str(caught.value)


# --------------------------------------------------------------------------- the realistic file


def test_realistic_llama_swap_config_parses() -> None:
    config = load_config(DATA / "llama-swap-example.yaml", env={"HOMELAB_TEST_KEY": "k1"})
    assert list(config.models) == ["llama", "qwen3", "nomic-embed", "vllm", "external"]
    llama = config.models["llama"]
    # macros expand, comment lines drop, ports go in sorted-ID order from startPort
    assert llama.cmd == (
        "/path/to/llama-server/llama-server-ec9e0301", "--port", "10001",
        "--model", "path/to/llama-8B-Q4_K_M.gguf", "--ctx-size", "4096",
    )  # fmt: skip
    assert llama.port == 10001
    assert config.models["nomic-embed"].port == 10002
    assert config.models["qwen3"].port == 10003
    assert config.models["vllm"].port == 10004
    assert config.models["external"].port is None
    assert llama.proxy == "http://127.0.0.1:10001"
    assert llama.check_endpoint == "/custom-endpoint"
    assert llama.env == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert llama.ttl == 60
    assert llama.use_model_name == "qwen:qwq"
    assert llama.concurrency_limit == 4
    assert llama.send_loading_state is False
    assert llama.filters.strip_params == ("temperature", "top_k", "top_p")
    assert llama.filters.set_params == {"chat_template_kwargs": {"enable_thinking": False}}
    # metadata: type-preserving macros, and vram_mib picked up
    assert llama.metadata["port"] == 10001
    assert llama.metadata["note"] == "The llama is running on 10001"
    assert llama.vram_mib == 6144
    # a model macro overrides the global one in place, so cached-llama sees 16384
    qwen = config.models["qwen3"]
    assert qwen.cmd[-4:] == ("-c", "16384", "-m", "/models/qwen3.gguf")
    assert qwen.proxy == "http://localhost:10003"
    assert qwen.send_loading_state is True  # inherits the global sendLoadingState
    # setParamsByID keys become aliases (with ${MODEL_ID} expanded)
    assert config.resolve("qwen3:thinking") == "qwen3"
    assert config.resolve("qwen3-fast") == "qwen3"
    assert config.resolve("gpt-4o-mini") == "llama"
    assert qwen.aliases == ("qwen3:thinking", "qwen3-fast")
    vllm = config.models["vllm"]
    assert vllm.check_endpoint is None
    assert vllm.cmd_stop == ("docker", "stop", "vllm-10004")
    assert config.models["external"].cmd_stop == ("kill", "-TERM", "${PID}")
    assert config.models["external"].unload_timeout == 3
    assert config.models["nomic-embed"].unload_timeout == 10
    # groups as written; ungrouped models stay out (the implicit default group is applied by
    # group_evictions)
    assert list(config.groups) == ["chat", "forever"]
    assert config.groups["chat"].members == ("llama", "qwen3")
    assert config.groups["forever"].persistent is True
    assert group_evictions(config.groups, frozenset({"vllm", "nomic-embed"}), "external") == {"vllm"}
    assert group_evictions(config.groups, frozenset({"vllm", "nomic-embed"}), "qwen3") == {"vllm"}
    assert config.hooks.preload == ("llama",)  # alias resolved to the model ID
    assert config.api_keys == ("sk-local-k1",)
    assert config.peers["llama-server-box"].models == ("gemma-3n", "qwen2.5-coder")
    assert config.peers["llama-server-box"].filters.strip_params == ("seed",)
    assert config.health_check_timeout == 500
    assert config.start_port == 10001
    assert config.vram_budget_mib == 24000
    assert config.max_wait == 15
    assert config.source == DATA / "llama-swap-example.yaml"


def test_minimal_config_defaults() -> None:
    config = parse(
        """
        models:
          tiny:
            cmd: llama-server --port ${PORT} -m tiny.gguf
        """
    )
    model = config.models["tiny"]
    assert model.port == 5800
    assert model.proxy == "http://localhost:5800"
    assert model.check_endpoint == "/health"
    assert model.ttl == 0
    assert model.unload_timeout == 10
    assert model.concurrency_limit == 10
    assert model.cmd_stop is None
    assert config.health_check_timeout == 120
    assert config.groups == {}
    assert config.matrix is None
    assert config.vram_budget_mib is None
    assert config.max_wait == 30


# --------------------------------------------------------------------------- strict keys


@pytest.mark.parametrize(
    ("text", "where", "fix"),
    [
        ("models:\n  a:\n    cmd: x ${PORT}\n    chekEndpoint: /h\n", ":4: models.a.chekEndpoint", "'checkEndpoint'"),
        ("healthcheckTimeout: 30\nmodels: {}\n", ":1: healthcheckTimeout", "'healthCheckTimeout'"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    filters:\n      setParam: {}\n", ":5: models.a.filters.setParam", "'setParams'"),
        ("models: {}\ngroups:\n  g:\n    member: []\n", ":4: groups.g.member", "'members'"),
        ("models: {}\npeers:\n  p:\n    proxy: http://h:1\n    model: [a]\n", ":5: peers.p.model", "'models'"),
        ("models: {}\nhooks:\n  onStartup: {}\n", ":3: hooks.onStartup", "'on_startup'"),
        ("models:\n  a:\n    cmd: x ${PORT}\nmatrix:\n  set: {}\n", ":5: matrix.set", "'sets'"),
    ],
)
def test_unknown_keys_are_errors_with_line_and_suggestion(text: str, where: str, fix: str) -> None:
    message = error_of(text)
    assert message.startswith(f"{SOURCE}{where}: unknown key")
    assert f"did you mean {fix}" in message


def test_x_keys_are_free_everywhere() -> None:
    config = parse(
        """
        x-anything: {nested: 1}
        x-vramBudgetMiB: 8000
        models:
          a:
            cmd: x --port ${PORT}
            x-note: mine
            filters:
              x-too: 1
        """
    )
    assert config.vram_budget_mib == 8000


def test_llama_swap_keys_that_are_not_ours_say_so() -> None:
    assert "move it to the top level" in error_of("models:\n  a:\n    cmd: x ${PORT}\n    healthCheckTimeout: 5\n")


def test_duplicate_keys_are_errors() -> None:
    message = error_of("models:\n  a:\n    cmd: x ${PORT}\n    cmd: y\n")
    assert ":4: models.a.cmd: duplicate key (first at line 3)" in message


def test_yaml_merge_keys_work() -> None:
    config = parse(
        """
        models:
          a: &base
            cmd: x --port ${PORT}
            ttl: 30
          b:
            <<: *base
            ttl: 60
        """
    )
    assert config.models["b"].ttl == 60
    assert config.models["b"].cmd == ("x", "--port", "5801")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models:\n  a:\n    cmd: x ${PORT}\n    ttl: soon\n", ":4: models.a.ttl: expected a number"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    unlisted: maybe\n", ":4: models.a.unlisted: expected true or false"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    aliases: b\n", ":4: models.a.aliases: expected a list"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    env: [NOEQUALS]\n", ":4: models.a.env[0]: expected NAME=value"),
        ("models:\n  a:\n    ttl: 5\n", ":3: models.a: missing cmd"),
        ("models:\n  a:\n    cmd: '# only a comment'\n    proxy: http://h:1\n", "cmd is empty"),
        ("models:\n  a:\n    cmd: x 'unclosed\n    proxy: http://h:1\n", "check the quotes"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    proxy: localhost:8080\n", "not an http(s) URL"),
        ("logLevel: verbose\nmodels: {}\n", ":1: logLevel: must be one of debug, info, warn, error"),
        ("startPort: 0\nmodels: {}\n", ":1: startPort: must be at least 1"),
        ("apiKeys: ['has space']\nmodels: {}\n", "cannot contain spaces"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    metadata: {vram_mib: lots}\n", "metadata.vram_mib must be a whole number"),
        ("models:\n  a:\n    cmd: x ${PORT}\n    filters: {setParams: {model: b}}\n", "'model' cannot be set"),
        ("models: [a, b]\n", ":1: models: expected a mapping of model IDs to models, found a list"),
        ("models:\n  a: [\n", ":3: not valid YAML"),
        ("", "the config is empty"),
    ],
)
def test_value_errors_name_the_place(text: str, words: str) -> None:
    assert words in error_of(text)


def test_strip_params_list_is_refused_with_the_string_form() -> None:
    message = error_of("models:\n  a:\n    cmd: x ${PORT}\n    filters:\n      stripParams: [a, b]\n")
    assert 'write it as stripParams: "a, b"' in message


def test_health_check_timeout_has_a_floor_of_15() -> None:
    assert parse("healthCheckTimeout: 5\nmodels: {}\n").health_check_timeout == 15


def test_env_as_mapping_and_ttl_from_global() -> None:
    config = parse(
        """
        globalTTL: 300
        models:
          a:
            cmd: x ${PORT}
            env: {CUDA_VISIBLE_DEVICES: 0, FLAG: true}
          b:
            cmd: y ${PORT}
            ttl: -1
          c:
            cmd: z ${PORT}
            ttl: 0
        """
    )
    assert config.models["a"].env == {"CUDA_VISIBLE_DEVICES": "0", "FLAG": "true"}
    assert config.models["a"].ttl == 300
    assert config.models["b"].ttl == 300
    assert config.models["c"].ttl == 0


def test_cmd_is_split_like_a_shell_without_one() -> None:
    config = parse(
        r"""
        models:
          a:
            cmd: |
              # leading comment
              llama-server --port ${PORT} \
                --alias "my model"   # a mid-line hash stays
              # trailing comment
              --jinja $HOME 'a|b'
        """
    )
    assert config.models["a"].cmd == (
        "llama-server", "--port", "5800", "--alias", "my model", "#", "a", "mid-line", "hash",
        "stays", "--jinja", "$HOME", "a|b",
    )  # fmt: skip


# --------------------------------------------------------------------------- macros and ${env.X}


def test_macros_in_order_and_env_first() -> None:
    config = parse(
        """
        macros:
          bin: ${env.LLAMA_BIN}
          server: ${bin} --host 127.0.0.1 --port ${PORT}
          ctx: 8192
        models:
          a:
            cmd: ${server} -c ${ctx} --alias ${MODEL_ID}
            name: ${MODEL_ID} at ${ctx}
        """,
        env={"LLAMA_BIN": "/opt/llama/bin/llama-server"},
    )
    model = config.models["a"]
    assert model.cmd == (
        "/opt/llama/bin/llama-server", "--host", "127.0.0.1", "--port", "5800", "-c", "8192", "--alias", "a",
    )  # fmt: skip
    assert model.name == "a at 8192"


def test_env_substitution_makes_numbers_and_ignores_comments() -> None:
    config = parse(
        """
        # ${env.NOT_SET_AND_ONLY_IN_A_COMMENT}
        globalTTL: ${env.TTL}
        models:
          a:
            cmd: x --port ${PORT}
            name: "double ${env.QUOTED}"
            description: 'single ${env.QUOTED}'
        """,
        env={"TTL": "90", "QUOTED": 'say "hi" it\'s C:\\dir'},
    )
    assert config.global_ttl == 90  # a number, as if written in the file
    # the value is escaped for the quoting style of the scalar it lands in
    assert config.models["a"].name == 'double say "hi" it\'s C:\\dir'
    assert config.models["a"].description == 'single say "hi" it\'s C:\\dir'


def test_unset_env_is_fatal_and_named() -> None:
    message = error_of("models:\n  a:\n    cmd: x ${PORT}\n    env: ['TOKEN=${env.HF_TOKEN_FOR_TEST}']\n")
    assert f"{SOURCE}:4:" in message
    assert "'HF_TOKEN_FOR_TEST' is not set" in message


def test_env_in_block_scalars_flow_style_and_first_unset_named() -> None:
    config = parse(
        """
        models:
          a:
            cmd: |
              ${env.BIN} --port ${PORT}
              -m ${env.MODEL}
          b: {cmd: "b ${PORT}", ttl: ${env.TTL}}
        """,
        env={"BIN": "/usr/bin/llama-server", "MODEL": "/m/a b.gguf", "TTL": "7"},
    )
    assert config.models["a"].cmd == ("/usr/bin/llama-server", "--port", "5800", "-m", "/m/a", "b.gguf")
    assert config.models["b"].ttl == 7
    message = error_of("models:\n  a:\n    cmd: ${env.FIRST_UNSET}\n    name: ${env.SECOND_UNSET}\n")
    assert ":3:" in message and "FIRST_UNSET" in message
    assert "contains a newline" in error_of("models: {}\nlogLevel: ${env.NL}\n", env={"NL": "a\nb"})


def test_macro_may_use_only_earlier_macros() -> None:
    message = error_of("macros:\n  a: ${b} x\n  b: 1\nmodels: {}\n")
    assert ":2: macros.a:" in message
    assert "defined after it" in message and "move 'b' above 'a'" in message


def test_unknown_macro_is_an_error_with_suggestion() -> None:
    message = error_of("macros:\n  ctx_size: 1\nmodels:\n  a:\n    cmd: x ${PORT} -c ${ctx_sise}\n")
    assert ":5: models.a.cmd: unknown macro ${ctx_sise}" in message
    assert "did you mean ${ctx_size}" in message


@pytest.mark.parametrize("name", ["PORT", "MODEL_ID", "PID"])
def test_reserved_macro_names(name: str) -> None:
    assert f"{name} is reserved" in error_of(f"macros:\n  {name}: 1\nmodels: {{}}\n")
    model_level = f"models:\n  a:\n    cmd: x ${{PORT}}\n    macros:\n      {name}: 1\n"
    assert f"{name} is reserved" in error_of(model_level)


def test_pid_only_in_cmd_stop() -> None:
    assert "${PID} is only available in cmdStop" in error_of("models:\n  a:\n    cmd: x ${PID} ${PORT}\n")


def test_macro_self_reference_and_bad_values() -> None:
    assert "refers to itself" in error_of("macros:\n  a: x ${a}\nmodels: {}\n")
    assert "string, number or boolean" in error_of("macros:\n  a: [1, 2]\nmodels: {}\n")
    assert "letters, digits" in error_of("macros:\n  'a b': 1\nmodels: {}\n")


def test_typed_macros_in_metadata_and_set_params() -> None:
    config = parse(
        """
        macros:
          temp: 0.6
          think: true
        models:
          a:
            cmd: x ${PORT}
            metadata: {temperature: "${temp}", label: "t=${temp}", port: "${PORT}"}
            filters:
              setParams: {temperature: "${temp}"}
              setParamsByID:
                "${MODEL_ID}-think": {chat_template_kwargs: {enable_thinking: "${think}"}}
        """
    )
    model = config.models["a"]
    assert model.metadata == {"temperature": 0.6, "label": "t=0.6", "port": 5800}
    assert model.filters.set_params == {"temperature": 0.6}
    assert model.filters.set_params_by_id == {"a-think": {"chat_template_kwargs": {"enable_thinking": True}}}
    assert config.resolve("a-think") == "a"


# --------------------------------------------------------------------------- ports


def test_port_allocation_is_sorted_by_model_id_and_skips_models_without_it() -> None:
    config = parse(
        """
        startPort: 9000
        models:
          zeta: {cmd: "z --port ${PORT}"}
          alpha: {cmd: "a --port ${PORT}"}
          fixed: {cmd: "f --port 7000", proxy: "http://127.0.0.1:7000"}
          mid: {cmd: "m", proxy: "http://127.0.0.1:7001", checkEndpoint: none}
          beta:
            macros: {p: "--port ${PORT}"}
            cmd: b ${p}
        """
    )
    ports = {model_id: model.port for model_id, model in config.models.items()}
    assert ports == {"alpha": 9000, "beta": 9001, "fixed": None, "mid": None, "zeta": 9002}
    assert config.models["beta"].cmd == ("b", "--port", "9001")
    assert config.models["zeta"].proxy == "http://localhost:9002"


def test_proxy_with_port_but_cmd_without_is_an_error() -> None:
    message = error_of("models:\n  a:\n    cmd: llama-server --port 8080\n")
    assert ":3: models.a: proxy uses ${PORT} but cmd does not" in message


# --------------------------------------------------------------------------- aliases


def test_duplicate_alias_across_models_is_an_error() -> None:
    message = error_of(
        """
        models:
          a: {cmd: "a ${PORT}", aliases: [gpt]}
          b: {cmd: "b ${PORT}", aliases: [gpt]}
        """
    )
    assert "models.b.aliases: duplicate alias 'gpt': model 'a' already uses it" in message


def test_set_params_by_id_alias_conflicts() -> None:
    clash_with_alias = """
        models:
          a: {cmd: "a ${PORT}", aliases: [fast]}
          b:
            cmd: b ${PORT}
            filters: {setParamsByID: {fast: {temperature: 0}}}
        """
    assert "duplicate alias 'fast'" in error_of(clash_with_alias)
    clash_with_model = """
        models:
          a: {cmd: "a ${PORT}"}
          b:
            cmd: b ${PORT}
            filters: {setParamsByID: {a: {temperature: 0}}}
        """
    assert "'a' is also a model ID" in error_of(clash_with_model)
    own_id = parse(
        """
        models:
          b:
            cmd: b ${PORT}
            aliases: [quick]
            filters: {setParamsByID: {b: {temperature: 1}, quick: {temperature: 0}}}
        """
    )
    assert own_id.models["b"].aliases == ("quick",)  # own ID skipped, explicit alias not doubled


# --------------------------------------------------------------------------- groups


def test_groups_and_default_group() -> None:
    config = parse(
        """
        models:
          a: {cmd: "a ${PORT}"}
          b: {cmd: "b ${PORT}"}
          c: {cmd: "c ${PORT}"}
        groups:
          pair:
            swap: false
            exclusive: false
            members: [a, b]
        """
    )
    assert config.groups["pair"].swap is False
    assert config.groups["pair"].persistent is False
    assert list(config.groups) == ["pair"]
    assert "(default)" in error_of("models: {}\ngroups:\n  (default): {members: []}\n")


def test_group_errors() -> None:
    two = "models:\n  a: {cmd: 'a ${PORT}'}\ngroups:\n  g1: {members: [a]}\n  g2: {members: [a]}\n"
    assert ":5: groups.g2.members[0]: model 'a' is already in group 'g1'" in error_of(two)
    typo = "models:\n  alpha: {cmd: 'a ${PORT}'}\ngroups:\n  g1: {members: [alhpa]}\n"
    assert "did you mean 'alpha'" in error_of(typo)
    twice = "models:\n  a: {cmd: 'a ${PORT}'}\ngroups:\n  g1: {members: [a, a]}\n"
    assert "listed twice" in error_of(twice)
    both = "models:\n  a: {cmd: 'a ${PORT}'}\ngroups:\n  g1: {members: [a]}\nmatrix:\n  sets: {s: a}\n"
    assert "both groups and matrix" in error_of(both)


# --------------------------------------------------------------------------- matrix


MATRIX_CONFIG = """
    models:
      "Qwen/Qwen3-30B:Q4": {cmd: "q ${PORT}"}
      gemma: {cmd: "g ${PORT}"}
      embed: {cmd: "e ${PORT}"}
      rerank: {cmd: "r ${PORT}"}
    matrix:
      vars:
        qwen: "Qwen/Qwen3-30B:Q4"
      evict_costs:
        qwen: 10
      sets:
        rag: "(qwen | gemma) & +helpers"
        helpers: "embed & rerank"
"""


def test_matrix_vars_costs_sets_and_refs() -> None:
    config = parse(MATRIX_CONFIG)
    matrix = config.matrix
    assert matrix is not None
    assert config.groups == {}
    assert matrix.vars == {"qwen": "Qwen/Qwen3-30B:Q4"}
    assert matrix.evict_costs == {"Qwen/Qwen3-30B:Q4": 10}
    assert list(matrix.sets) == ["rag", "helpers"]
    assert matrix.alternatives("rag") == (
        frozenset({"Qwen/Qwen3-30B:Q4", "embed", "rerank"}),
        frozenset({"gemma", "embed", "rerank"}),
    )
    decision = solve(matrix, frozenset({"Qwen/Qwen3-30B:Q4", "embed"}), "gemma")
    assert decision.evict == {"Qwen/Qwen3-30B:Q4"}


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        ({"s": "qwen & nope"}, "'nope' is neither a matrix var nor a model"),
        ({"s": "gemma & (embed"}, "missing ')' at position 14"),
        ({"s": "gemma & +ghost"}, "references +ghost, which is not a set"),
        ({"a": "gemma & +b", "b": "embed | +a"}, "cycle"),
        ({"s": "Qwen/Qwen3-30B:Q4 & gemma"}, "matrix.vars"),
    ],
)
def test_matrix_errors(sets: dict[str, str], words: str) -> None:
    lines = "\n".join(f'    {name}: "{expr}"' for name, expr in sets.items())
    text = (
        "models:\n  Qwen/Qwen3-30B:Q4: {cmd: 'q ${PORT}'}\n  gemma: {cmd: 'g ${PORT}'}\n"
        "  embed: {cmd: 'e ${PORT}'}\nmatrix:\n  vars: {qwen: Qwen/Qwen3-30B:Q4}\n  sets:\n" + lines + "\n"
    )
    message = error_of(text)
    assert words in message
    assert f"{SOURCE}:" in message


def test_matrix_value_checks() -> None:
    base = "models:\n  gemma: {cmd: 'g ${PORT}'}\nmatrix:\n"
    assert "1-32 letters, digits" in error_of(base + "  vars: {too_long_name: gemma}\n  sets: {s: gemma}\n")
    assert "1-32 letters, digits" in error_of(base + f"  vars: {{{'g' * 33}: gemma}}\n  sets: {{s: gemma}}\n")
    assert parse(base + f"  vars: {{{'g.-' * 10}: gemma}}\n  sets: {{s: {'g.-' * 10}}}\n").matrix is not None
    assert "must be at least 1" in error_of(base + "  evict_costs: {gemma: 0}\n  sets: {s: gemma}\n")
    assert "at least one set" in error_of(base + "  sets: {}\n")
    both = base + "  vars: {g: gemma}\n  evict_costs: {g: 2, gemma: 3}\n  sets: {s: g}\n"
    assert "both name model 'gemma'" in error_of(both)


# --------------------------------------------------------------------------- peers and hooks


def test_peers() -> None:
    config = parse(
        """
        macros:
          key: sk-123
        models: {}
        peers:
          box:
            proxy: http://10.0.0.2:8080/
            apiKey: ${key}
            models: [qwen, qwen, gemma]
            filters:
              setParams: {temperature: 0.1}
        """
    )
    peer = config.peers["box"]
    assert peer.proxy == "http://10.0.0.2:8080"
    assert peer.api_key == "sk-123"
    assert peer.models == ("qwen", "gemma")
    assert peer.filters.set_params == {"temperature": 0.1}
    assert "missing proxy" in error_of("models: {}\npeers:\n  box:\n    models: [a]\n")
    assert "non-empty models" in error_of("models: {}\npeers:\n  box:\n    proxy: http://h:1\n    models: []\n")
    clash = "models:\n  box/a: {cmd: 'x ${PORT}'}\npeers:\n  box:\n    proxy: http://h:1\n    models: [a]\n"
    assert "both a peer model and a local model" in error_of(clash)


def test_preload_must_name_a_model() -> None:
    message = error_of("models:\n  alpha: {cmd: 'a ${PORT}'}\nhooks:\n  on_startup:\n    preload: [alpah]\n")
    assert ":5: hooks.on_startup.preload[0]: preload 'alpah' is not a model" in message


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- reload


RELOAD_BASE = """
models:
  a:
    cmd: a --port ${PORT}
    ttl: 60
    aliases: [x]
  b:
    cmd: b --port ${PORT}
    env: [K=1]
  c:
    cmd: c --port ${PORT}
"""


def test_models_to_restart_are_only_definition_changes() -> None:
    old = parse(RELOAD_BASE)
    # ttl, aliases, filters, metadata: no restart
    soft = RELOAD_BASE.replace("ttl: 60", "ttl: 5").replace("aliases: [x]", "aliases: [y]\n    metadata: {vram_mib: 10}")
    assert models_to_restart(old, parse(soft)) == set()
    # env changes restart b; removing c restarts (stops) c; adding d does not appear
    hard = RELOAD_BASE.replace("K=1", "K=2").replace("  c:\n    cmd: c --port ${PORT}\n", "  d:\n    cmd: d --port ${PORT}\n")
    assert models_to_restart(old, parse(hard)) == {"b", "c"}
    # adding a model that sorts first shifts every port: every model whose port moved restarts
    shifted = RELOAD_BASE + "  0first:\n    cmd: z --port ${PORT}\n"
    assert models_to_restart(old, parse(shifted)) == {"a", "b", "c"}


def test_models_to_restart_field_by_field() -> None:
    old = parse(RELOAD_BASE)
    model = old.models["a"]
    for change in (
        {"cmd": ("other",)},
        {"cmd_stop": ("kill", "${PID}")},
        {"proxy": "http://127.0.0.1:1"},
        {"check_endpoint": None},
        {"env": {"A": "1"}},
    ):
        new = replace(old, models={**old.models, "a": replace(model, **change)})
        assert models_to_restart(old, new) == {"a"}, change
    for change in (
        {"ttl": 1.0}, {"unload_timeout": 1.0}, {"concurrency_limit": 1}, {"name": "n"},
        {"unlisted": True}, {"use_model_name": "m"}, {"vram_mib": 3},
    ):  # fmt: skip
        new = replace(old, models={**old.models, "a": replace(model, **change)})
        assert models_to_restart(old, new) == set(), change


# --------------------------------------------------------------------------- properties


@st.composite
def macro_chains(draw: st.DrawFn) -> tuple[list[tuple[str, str]], int | None]:
    """Macros m0..mN; each value uses some earlier ones, optionally one uses a later one."""
    count = draw(st.integers(1, 6))
    macros: list[tuple[str, str]] = []
    for i in range(count):
        used = draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else []
        value = " ".join([f"v{i}", *(f"${{m{j}}}" for j in used)])
        macros.append((f"m{i}", value))
    bad = draw(st.none() | st.integers(0, count - 1))
    if bad is not None and bad + 1 < count:
        name, value = macros[bad]
        macros[bad] = (name, f"{value} ${{m{count - 1}}}")
    else:
        bad = None
    return macros, bad


def expand_reference(macros: list[tuple[str, str]], text: str) -> str:
    """Reference semantics: llama-swap's LIFO substitution (last defined first)."""
    for name, value in reversed(macros):
        text = text.replace(f"${{{name}}}", value)
    return text


@settings(max_examples=80, deadline=None)
@given(chain=macro_chains())
def test_macro_expansion_matches_llama_swap_lifo_order(chain: tuple[list[tuple[str, str]], int | None]) -> None:
    macros, bad = chain
    body = "\n".join(f'  {name}: "{value}"' for name, value in macros)
    uses = " ".join(f"${{{name}}}" for name, _ in macros)
    text = f"macros:\n{body}\nmodels:\n  a:\n    cmd: run --port ${{PORT}} {uses}\n"
    if bad is not None:
        with pytest.raises(ConfigError, match="defined after it"):
            parse_config(text, SOURCE, env={})
        return
    config = parse_config(text, SOURCE, env={})
    expected = expand_reference(macros, f"run --port 5800 {uses}").split()
    assert list(config.models["a"].cmd) == expected


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.text("abcxyz-._0189", min_size=1, max_size=6), min_size=1, max_size=8, unique=True),
    uses_port=st.data(),
    start=st.integers(1024, 60000),
)
def test_ports_are_contiguous_in_sorted_id_order(ids: list[str], uses_port: st.DataObject, start: int) -> None:
    flags = {model_id: uses_port.draw(st.booleans(), label=model_id) for model_id in ids}
    models = "\n".join(
        f'  "{model_id}": {{cmd: "{"s --port ${PORT}" if flags[model_id] else "s"}", proxy: '
        f'"{"http://127.0.0.1:${PORT}" if flags[model_id] else "http://127.0.0.1:1"}"}}'
        for model_id in ids
    )
    config = parse_config(f"startPort: {start}\nmodels:\n{models}\n", SOURCE, env={})
    users = sorted(model_id for model_id in ids if flags[model_id])
    assert {m: config.models[m].port for m in users} == {m: start + i for i, m in enumerate(users)}
    assert all(config.models[m].port is None for m in ids if not flags[m])
