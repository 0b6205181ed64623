"""The keys of current llama-swap (its internal/config), as the supervisor's loader reads them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from homelab.matrix import solve
from homelab.supervisor.config import DEFAULT_IGNORE_PATHS, Config, Timeouts
from homelab.supervisor.config_load import ConfigError, parse_config

SOURCE = Path("/etc/homelab/config.yaml")

MODELS = """
models:
  chat: {cmd: "srv --port ${PORT}", aliases: [chat-alias]}
  coder: {cmd: "srv --port ${PORT}"}
  embed: {cmd: "srv --port ${PORT}"}
peers:
  box: {proxy: "http://box:8080", models: [remote-a, org/remote-b]}
"""


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), SOURCE, {})


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return str(caught.value)


def test_every_current_key_is_read() -> None:
    config = parse(
        MODELS
        + """
logTimeFormat: RFC3339
metricsMaxInMemory: 50
captureBuffer: 0
store: {path: activity.sqlite}
ui: {activity: {session_id: [" X-Session-ID ", x-session-id, "", X-Other]}}
performance: {disabled: true, every: 1m30s}
upstream: {ignorePaths: ['^/ws$', '\\.map$']}
routing:
  router:
    use: group
    settings:
      groups:
        pair: {swap: false, exclusive: true, members: [chat, coder]}
  scheduler:
    use: fifo
    settings: {fifo: {priority: {chat-alias: 10, embed: -1}}}
selectors:
  code:
    strategy: spillover
    targets: [chat, coder, box/remote-a]
    settings: {spillover: 4}
    name: " Coding "
    description: Busy-aware
    metadata: {purpose: coding}
  warmest: {strategy: warm, targets: [coder, chat-alias]}
profiles:
  night:
    description: Quiet hours
    pins: {big: code, chat: coder, embed: ~}
"""
    )
    assert config.log_time_format == "rfc3339"
    assert (config.metrics_max_in_memory, config.capture_buffer_mib) == (50, 0)
    assert config.store_path == SOURCE.parent / "activity.sqlite"
    assert config.session_headers == ("X-Session-ID", "X-Other")
    assert (config.performance.disabled, config.performance.every) == (True, 90.0)
    assert [p.pattern for p in config.ignore_paths] == ["^/ws$", r"\.map$"]
    assert config.groups["pair"].members == ("chat", "coder") and not config.groups["pair"].swap
    assert config.fifo_priority == {"chat": 10, "embed": -1}  # aliases resolve to the model ID
    code = config.selectors["code"]
    assert (code.strategy, code.targets, code.spillover) == ("spillover", ("chat", "coder", "box/remote-a"), 4)
    assert (code.name, code.description, code.metadata) == ("Coding", "Busy-aware", {"purpose": "coding"})
    assert config.selectors["warmest"].spillover == 1
    night = config.profiles["night"]
    assert night.pins == {"big": "code", "chat": "coder", "embed": ""}
    assert night.description == "Quiet hours"


def test_defaults_match_upstream() -> None:
    config = parse(MODELS)
    assert config.ignore_paths == DEFAULT_IGNORE_PATHS
    assert DEFAULT_IGNORE_PATHS[0].search("/static/app.js") and not DEFAULT_IGNORE_PATHS[0].search("/v1/chat")
    assert config.models["chat"].timeouts == Timeouts(30, 30, 0, 10, 1, 90)
    assert config.peers["box"].timeouts == Timeouts(30, 30, 60, 10, 1, 90)
    assert config.session_headers == ("X-Session-ID", "X-Litellm-Session-Id")
    assert (config.performance.every, config.capture_buffer_mib, config.metrics_max_in_memory) == (5.0, 5, 1000)
    assert config.models["chat"].capabilities.empty and not config.models["chat"].ignore_websockets


def test_model_and_peer_timeouts_capabilities_compat() -> None:
    config = parse(
        """
        models:
          m:
            cmd: srv --port ${PORT}
            timeouts: {connect: 5, responseHeader: 60, keepalive: 0, tlsHandshake: 3, expectContinue: 2, idleConn: 7}
            capabilities: {in: [text, image], out: [text], tools: true, reranker: false, context: 32000}
            compat: {ignoreWebsockets: true}
          comfyui_auto: {cmd: "comfy --port ${PORT}"}
        peers:
          p: {proxy: "http://p", models: [x], timeouts: {responseHeader: 0}}
        """
    )
    m = config.models["m"]
    assert m.timeouts == Timeouts(5, 0, 60, 3, 2, 7)
    assert (m.capabilities.inputs, m.capabilities.outputs, m.capabilities.tools) == (("text", "image"), ("text",), True)
    assert m.capabilities.context == 32000 and m.ignore_websockets
    assert config.peers["p"].timeouts.response_header == 0 and config.peers["p"].timeouts.connect == 30
    comfy = config.models["comfyui_auto"]  # upstream's fixed ComfyUI model
    assert comfy.ignore_websockets and comfy.concurrency_limit == 50


def test_matrix_under_routing_solves_without_a_cap() -> None:
    groups = [" | ".join(f"m{i}x{j}" for j in range(6)) for i in range(6)]  # 6^6 = 46656 alternatives
    models = "\n".join(f"  m{i}x{j}: {{cmd: 'srv --port ${{PORT}}'}}" for i in range(6) for j in range(6))
    sets = " & ".join(f"({g})" for g in groups)
    config = parse(f"models:\n{models}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n"
                   f"        sets:\n          all: \"{sets}\"\n")
    assert config.matrix is not None and config.matrix.vars == {}  # vars are optional
    decision = solve(config.matrix, frozenset({"m0x1", "m0x2", "m3x0"}), "m5x5")
    assert decision.evict == {"m0x2"}  # one of the two rivals goes (the first choice is kept), m3x0 stays
    assert {"m0x1", "m3x0", "m5x5"} <= decision.alternative


@pytest.mark.parametrize(
    ("snippet", "words"),
    [
        ("groups: {g: {members: [chat]}}\nrouting: {router: {use: group}}\n", "move the top-level"),
        ("routing: {router: {use: matrix}}\n", "settings.matrix is not set"),
        ("routing: {router: {use: matrx}}\n", "did you mean 'matrix'"),
        ("routing: {scheduler: {use: lifo}}\n", "did you mean 'fifo'"),
        ("routing: {scheduler: {settings: {fifo: {priority: {chatt: 1}}}}}\n", "did you mean 'chat'"),
        ("routing: {router: {setings: {}}}\n", "did you mean 'settings'"),
        ("selector: {}\n", "did you mean 'selectors'"),
        ("selectors: {chat: {strategy: pin, targets: [coder]}}\n", "same name as a model ID"),
        ("selectors: {chat-alias: {strategy: pin, targets: [coder]}}\n", "same name as a model alias"),
        ("selectors: {s: {targets: [coder]}}\n", "missing strategy"),
        ("selectors: {s: {strategy: hot, targets: [coder]}}\n", "use one of warm, pin, spillover"),
        ("selectors: {s: {strategy: pin, targets: []}}\n", "at least one model"),
        ("selectors: {s: {strategy: pin, targets: [codr]}}\n", "did you mean 'coder'"),
        ("selectors: {s: {strategy: warm, targets: [remote-a]}}\n", "needs local models"),
        ("selectors: {s: {strategy: pin, targets: [t]}, t: {strategy: pin, targets: [chat]}}\n", "other selectors"),
        ("selectors: {s: {strategy: spillover, targets: [chat, coder]}}\n", "in no routing group"),
        ("selectors: {s: {strategy: spillover, targets: [chat, chat-alias]}}\n", "twice"),
        ("selectors: {s: {strategy: spillover, targets: [coder], settings: {spillover: 0}}}\n", "at least 1"),
        ("profiles: {p: {pins: {}}}\n", "at least one entry"),
        ("profiles: {p: [chat]}\n", "old list form"),
        ("profiles: {p: {pins: {x: nowhere}}}\n", "not a model, alias, peer model or selector"),
        ("upstream: {ignorePaths: ['(']}\n", "not a valid regular expression"),
        ("upstream: {ignorePath: []}\n", "did you mean 'ignorePaths'"),
        ("performance: {every: 1s}\n", "at least 5s"),
        ("performance: {every: 10}\n", "not a duration"),
        ("logTimeFormat: iso\n", "unknown time format"),
        ("store: {}\n", "store needs a path"),
        ("ui: {activity: {session: []}}\n", "did you mean 'session_id'"),
    ],
)
def test_errors_name_the_key_and_the_fix(snippet: str, words: str) -> None:
    message = error_of(MODELS + snippet)
    assert words in message
    assert str(SOURCE) in message


def test_model_key_errors() -> None:
    base = "models:\n  m:\n    cmd: srv --port ${PORT}\n"
    assert "did you mean 'responseHeader'" in error_of(base + "    timeouts: {responseHeaders: 5}\n")
    assert "must be at least 0" in error_of(base + "    timeouts: {connect: -1}\n")
    assert "invalid modality 'video'" in error_of(base + "    capabilities: {in: [video]}\n")
    assert "did you mean 'ignoreWebsockets'" in error_of(base + "    compat: {ignoreWebsocket: true}\n")


def test_spillover_targets_must_be_able_to_run_together() -> None:
    swap_group = "routing: {router: {settings: {groups: {g: {members: [chat, coder]}}}}}\n"
    assert "which swaps" in error_of(MODELS + swap_group + "selectors: {s: {strategy: spillover, targets: [chat, coder]}}\n")
    matrix = "routing: {router: {use: matrix, settings: {matrix: {sets: {a: 'chat | coder'}}}}}\n"
    assert "never run together" in error_of(MODELS + matrix + "selectors: {s: {strategy: spillover, targets: [chat, coder]}}\n")
    together = "routing: {router: {use: matrix, settings: {matrix: {sets: {a: 'chat & coder'}}}}}\n"
    assert parse(MODELS + together + "selectors: {s: {strategy: spillover, targets: [chat, coder]}}\n").selectors


def test_unused_router_settings_and_selector_preload_are_warnings() -> None:
    config = parse(
        MODELS
        + "routing: {router: {use: group, settings: {matrix: {sets: {a: 'x & y'}}}}}\n"
        + "selectors: {s: {strategy: pin, targets: [chat]}}\nhooks: {on_startup: {preload: [s, chat]}}\n"
    )
    assert config.hooks.preload == ("chat",)
    assert any("settings.matrix is unused" in w for w in config.warnings)
    assert any("'s' is a selector" in w for w in config.warnings)


def test_group_member_that_is_no_model() -> None:
    """Unlike a typo (an error, see test_config_load), a name like no model is ignored with a
    warning, as llama-swap ignores it."""
    config = parse(MODELS + "groups: {g: {members: [chat, placeholder-xyz]}}\n")
    assert config.groups["g"].members == ("chat",)
    assert any("'placeholder-xyz' is not a model" in w for w in config.warnings)
    assert "did you mean 'coder'" in error_of(MODELS + "groups: {g: {members: [codr]}}\n")
