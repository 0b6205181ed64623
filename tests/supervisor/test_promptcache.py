"""The prompt cache's pure core (key, invalidation, LRU caps, index), the prefetch plan and the
swap settings in config.yaml."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from homelab.supervisor.config import Config, ModelConfig, PromptCacheSettings
from homelab.supervisor.config_load import ConfigError, models_to_restart, parse_config
from homelab.supervisor.metrics import Metrics
from homelab.supervisor.prefetch import (
    mem_available,
    model_files,
    prefetch_budget,
    swap_plan,
)
from homelab.supervisor.promptcache import (
    CacheIndex,
    Entry,
    PromptCache,
    cache_key,
    enabled_for,
    keep_idle_slots,
    kv_unified,
    model_dir_name,
)


def _cmd(model: Path, *extra: str) -> tuple[str, ...]:
    return ("/usr/bin/env", "-m", str(model), "--host", "127.0.0.1", "--port", "5800", "-c", "32768", *extra)


def test_key_ignores_ports_threads_and_logging_but_not_kv_flags(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    base = cache_key(_cmd(model))
    assert cache_key(("/usr/bin/env", "-m", str(model), "--host", "0.0.0.0", "--port", "6000", "-c", "32768",
                      "-t", "8", "--metrics", "--no-webui", "--slot-save-path", "/x")) == base
    for changed in (("-ctk", "q8_0"), ("--cache-type-v", "q4_0"), ("-np", "2"), ("-ngl", "99"),
                    ("--flash-attn", "on"), ("--swa-full",), ("--some-future-flag", "1")):
        assert cache_key(_cmd(model, *changed)) != base, changed
    assert cache_key(_cmd(model)[:-1] + ("65536",)) != base


def test_key_follows_the_model_file_and_the_binary(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    before = cache_key(_cmd(model))
    model.write_bytes(b"GGUF" + bytes(101))  # replaced by a new download
    assert cache_key(_cmd(model)) != before
    same = cache_key(_cmd(model))
    os.utime(model, ns=(1, 1))  # touched (same size): another file as far as we can tell
    assert cache_key(_cmd(model)) != same
    binary = tmp_path / "llama-server"
    binary.write_bytes(b"\x7fELF1")
    built = cache_key((str(binary), *_cmd(model)[1:]))
    binary.write_bytes(b"\x7fELF22")  # rebuilt
    assert cache_key((str(binary), *_cmd(model)[1:])) != built


def test_on_by_default_only_for_long_contexts(tmp_path: Path) -> None:
    settings = PromptCacheSettings(min_ctx=16384)

    def model(*cmd: str, **fields: object) -> ModelConfig:
        return ModelConfig(id="a", cmd=cmd, proxy="http://127.0.0.1:1", port=1, **fields)  # type: ignore[arg-type]

    assert enabled_for(model("llama-server", "-m", "x.gguf", "-c", "32768"), settings)
    assert enabled_for(model("llama-server", "-m", "x.gguf", "--ctx-size=16384"), settings)
    assert not enabled_for(model("llama-server", "-m", "x.gguf", "-c", "4096"), settings)
    assert not enabled_for(model("llama-server", "-m", "x.gguf"), settings)  # unknown ctx
    assert enabled_for(model("llama-server", "-m", "x.gguf", "-c", "4096", prompt_cache=True), settings)
    assert not enabled_for(model("llama-server", "-m", "x.gguf", "-c", "65536", prompt_cache=False), settings)
    # router mode (no -m), slots endpoint off, or the user's own --slot-save-path: never
    assert not enabled_for(model("llama-server", "--models-preset", "p.ini", prompt_cache=True), settings)
    assert not enabled_for(model("llama-server", "-m", "x.gguf", "--no-slots", prompt_cache=True), settings)
    assert not enabled_for(model("llama-server", "-m", "x.gguf", "--slot-save-path", "/s", prompt_cache=True),
                           settings)


def _entry(model: str, slot: int, size: int, used: float, key: str = "k") -> Entry:
    return Entry(model, key, slot, f"{model_dir_name(model)}/{key}-slot{slot}.bin", size, 10, used)


def test_split_refuses_other_keys_and_never_crosses_models() -> None:
    index = CacheIndex([_entry("a", 0, 1, 1, "k1"), _entry("a", 1, 1, 2, "k2"), _entry("b", 0, 1, 3, "k1")])
    matching, stale = index.split("a", "k1")
    assert [(e.model, e.slot) for e in matching] == [("a", 0)]
    assert [(e.model, e.slot) for e in stale] == [("a", 1)]
    assert index.split("c", "k1") == ([], [])


def test_record_replaces_the_same_slot() -> None:
    index = CacheIndex([_entry("a", 0, 5, 1)])
    index.record(_entry("a", 0, 7, 2))
    index.record(_entry("a", 1, 3, 3))
    assert sorted((e.slot, e.bytes) for e in index.entries) == [(0, 7), (1, 3)]


def test_caps_drop_least_recently_used_first() -> None:
    a_old, a_new = _entry("a", 0, 60, 1), _entry("a", 1, 60, 5)
    b_old, b_new = _entry("b", 0, 40, 2), _entry("b", 1, 40, 4)
    index = CacheIndex([a_new, b_old, a_old, b_new])
    # per model 100: a (120) loses its oldest slot; total 120 (140 left): then the oldest left goes
    assert index.over_caps(100, 120) == [a_old, b_old]
    assert index.over_caps(1000, 1000) == []
    # b fits once its oldest slot goes; no file over the per-model cap ever stays
    assert index.over_caps(50, 1000) == [a_old, b_old, a_new]


def test_index_round_trip_and_refuses_paths_outside_the_cache() -> None:
    good = _entry("a/b:c", 0, 5, 1.5)
    text = CacheIndex([good]).to_json()
    assert CacheIndex.from_json(text).entries == [good]
    evil = CacheIndex([Entry("a", "k", 0, "../../etc/passwd", 1, 1, 1), Entry("a", "k", 0, "/etc/x/y", 1, 1, 1)])
    assert CacheIndex.from_json(evil.to_json()).entries == []
    assert CacheIndex.from_json("not json").entries == []
    assert CacheIndex.from_json('{"version": 1, "entries": [{"model": "a"}]}').entries == []


def test_model_dir_names_are_safe_and_distinct() -> None:
    names = {model_dir_name(m) for m in ("a/b", "a_b", "a:b", "..", "x" * 200)}
    assert len(names) == 5
    assert all("/" not in n and not n.startswith(".") and len(n) < 80 for n in names)


# --------------------------------------------------------------------------- prefetch


def test_model_files_include_split_parts_and_projector(tmp_path: Path) -> None:
    parts = [tmp_path / f"big-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for part in parts:
        part.write_bytes(b"x")
    proj = tmp_path / "mmproj.gguf"
    proj.write_bytes(b"x")
    assert model_files(("llama-server", "-m", str(parts[0]), "--mmproj", str(proj))) == [*parts, proj]
    assert model_files(("llama-server", f"--model={proj}")) == [proj]
    assert model_files(("llama-server", "-m", str(tmp_path / "missing.gguf"))) == []


def test_budget_keeps_what_resident_models_need() -> None:
    text = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n"
    assert mem_available(text) == 2048 * 1024
    assert prefetch_budget(10_000, 3_000, 1_000) == 6_000
    assert prefetch_budget(3_000, 3_000, 1_000) == 0
    assert prefetch_budget(None, 0, 0) == 0


def test_swap_plan_counts_only_the_models_that_stay(tmp_path: Path) -> None:
    files = {}
    for name, size in (("a", 3000), ("b", 2000), ("c", 1000)):
        files[name] = tmp_path / f"{name}.gguf"
        files[name].write_bytes(bytes(size))
    config = parse_config(textwrap.dedent(f"""
        x-prefetch: {{reserveMiB: 0}}
        models:
          a: {{cmd: llama-server -m {files['a']}, proxy: "http://127.0.0.1:1"}}
          b: {{cmd: llama-server -m {files['b']}, proxy: "http://127.0.0.1:2"}}
          c: {{cmd: llama-server -m {files['c']}, proxy: "http://127.0.0.1:3"}}
        matrix:
          sets:
            s1: "a & c"
            s2: "b"
    """))
    # a and c may run together: starting a next to c keeps c's 1000 bytes
    assert swap_plan(config, "a", ["c"], [], 3500) == ([files["a"]], 2500)
    assert swap_plan(config, "a", ["c"], [], 100_000) == ([files["a"]], 3000)
    # b evicts both: everything available may be used
    assert swap_plan(config, "b", ["a", "c"], [], 2500) == ([files["b"]], 2000)


# --------------------------------------------------------------------------- config


def test_swap_settings_parse_strictly(tmp_path: Path) -> None:
    source = tmp_path / "config.yaml"
    config = parse_config(textwrap.dedent("""
        x-promptCache: {dir: cache, maxMiB: 100, maxMiBPerModel: 10, saveTimeout: 2.5, minCtx: 8192}
        x-prefetch: {keepWarm: [small], reserveMiB: 0}
        models:
          big: {cmd: llama-server -m big.gguf, proxy: "http://127.0.0.1:1", x-promptCache: false}
          small: {cmd: llama-server -m small.gguf, proxy: "http://127.0.0.1:2", aliases: [s]}
    """), source)
    assert config.prompt_cache == PromptCacheSettings(dir=tmp_path / "cache", max_mib=100, max_mib_per_model=10,
                                                      save_timeout=2.5, min_ctx=8192)
    assert config.prefetch.keep_warm == ("small",) and config.prefetch.reserve_mib == 0
    assert config.models["big"].prompt_cache is False and config.models["small"].prompt_cache is None
    assert parse_config("x-prefetch: false\nmodels: {}\n").prefetch.enabled is False

    bad = {
        "x-promptCache: {maxMB: 1}\nmodels: {}\n": "did you mean 'maxMiB'",
        "x-promptCache: {saveTimeout: -1}\nmodels: {}\n": "must be at least 0",
        "x-prefetch: {keepWarm: [nope]}\nmodels: {}\n": "not a model or alias",
        "x-prefetch: maybe\nmodels: {}\n": "expected true or false",
        "models:\n  a: {cmd: x, proxy: 'http://h:1', x-promptCache: yes please}\n": "expected true or false",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_config(text, source)


def test_toggling_the_cache_restarts_the_model() -> None:
    model = ModelConfig(id="a", cmd=("x",), proxy="http://h:1", port=None)
    old = Config(models={"a": model})
    new = Config(models={"a": ModelConfig(id="a", cmd=("x",), proxy="http://h:1", port=None, prompt_cache=True)})
    assert models_to_restart(old, new) == {"a"}


def test_the_key_is_taken_when_the_backend_starts(tmp_path: Path) -> None:
    """A model file replaced under a running backend: its KV cells belong to the old file, so
    they are saved under the old key and refused by the next start (which reads the new file)."""
    from homelab.supervisor.metrics import Metrics
    from homelab.supervisor.promptcache import PromptCache

    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF1")
    model = ModelConfig(id="a", cmd=_cmd(weights), proxy="http://127.0.0.1:1", port=1, prompt_cache=True)
    cache = PromptCache(tmp_path / "cache", PromptCacheSettings(), Metrics())
    launched = cache.launch_config(model)
    assert launched.cmd[-2:] == ("--slot-save-path", str(cache.model_dir("a")))
    assert cache.active_for(launched) and (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    started_with = cache.key_of(launched)
    weights.write_bytes(b"GGUF22")  # a new download lands while the backend runs
    assert cache.key_of(launched) == started_with != cache_key(model.cmd)
    assert cache.key_of(cache.launch_config(model)) == cache_key(model.cmd)  # the next start


@pytest.mark.parametrize(
    ("flags", "env", "unified"),
    [
        ((), {}, True),  # llama-server's default: automatic slots, one shared buffer
        (("-np", "-1"), {}, True),
        (("-np", "2"), {}, False),
        (("--parallel=4",), {}, False),
        (("-np", "2", "-kvu"), {}, True),
        (("-kvu", "--no-kv-unified"), {}, False),  # the last word wins
        (("-np", "2"), {"LLAMA_ARG_KV_UNIFIED": "on"}, True),
        ((), {"LLAMA_ARG_NO_KV_UNIFIED": "1"}, False),
        ((), {"LLAMA_ARG_N_PARALLEL": "3"}, False),
        (("-no-kvu",), {"LLAMA_ARG_KV_UNIFIED": "1"}, False),  # the command line wins over the environment
    ],
)
def test_unified_kv_cache_as_llama_server_decides_it(flags: tuple[str, ...], env: dict[str, str],
                                                    unified: bool) -> None:
    assert kv_unified(("llama-server", "-m", "m.gguf", *flags), env) is unified


def test_idle_slots_are_kept_only_in_a_unified_kv_cache_and_never_against_the_user(tmp_path: Path) -> None:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF1")

    def model(*flags: str, **env: str) -> ModelConfig:
        return ModelConfig(id="a", cmd=_cmd(weights, *flags), proxy="http://127.0.0.1:1", port=1,
                           prompt_cache=True, env=env)

    assert keep_idle_slots(model("-np", "2", "-kvu")) == {"LLAMA_ARG_CACHE_IDLE_SLOTS": "0"}
    assert keep_idle_slots(model("-np", "2")) == {}
    assert keep_idle_slots(model("-kvu", LLAMA_ARG_CACHE_IDLE_SLOTS="1")) == {"LLAMA_ARG_CACHE_IDLE_SLOTS": "1"}
    assert keep_idle_slots(model("-kvu", LLAMA_ARG_NO_CACHE_IDLE_SLOTS="1")) == {"LLAMA_ARG_NO_CACHE_IDLE_SLOTS": "1"}
    cache = PromptCache(tmp_path / "cache", PromptCacheSettings(), Metrics())
    launched = cache.launch_config(model("-kvu", HOME="/h"))
    assert launched.env == {"HOME": "/h", "LLAMA_ARG_CACHE_IDLE_SLOTS": "0"}
    assert cache.key_of(launched) == cache_key(model("-kvu").cmd)  # not part of what a KV cell means
    off = dataclasses.replace(model("-kvu"), prompt_cache=False)
    assert cache.launch_config(off).env == {}  # no cache, no change


def _saved_slot(cache: PromptCache, model: str, slot: int, used: float, size: int) -> Entry:
    folder = cache.model_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"k-slot{slot}.bin"
    (folder / name).write_bytes(b"x" * size)
    entry = Entry(model, "k", slot, f"{folder.name}/{name}", size, 100, used)
    cache.index.record(entry)
    return entry


def test_reload_applies_new_caps_and_bounds_at_once(tmp_path: Path) -> None:
    metrics = Metrics()
    cache = PromptCache(tmp_path / "cache", PromptCacheSettings(max_mib_per_model=8), metrics)
    older = _saved_slot(cache, "a", 0, used=100.0, size=700_000)
    newer = _saved_slot(cache, "a", 1, used=200.0, size=700_000)
    cache.reconfigure(PromptCacheSettings(max_mib_per_model=1, save_timeout=0.5, min_ctx=1024))
    assert cache.index.entries == [newer]  # the least recently used slot went to fit the new cap
    assert not (cache.root / older.file).exists() and (cache.root / newer.file).exists()
    assert metrics.prompt_cache_dropped.values[()] == 1
    assert cache.settings.save_timeout == 0.5
    short = ModelConfig(id="b", cmd=_cmd(tmp_path / "m.gguf", "-c", "2048"), proxy="http://h:1", port=1)
    assert cache.enabled_for(short)  # minCtx 1024 now
    assert CacheIndex.from_json((cache.root / "index.json").read_text()).entries == [newer]
