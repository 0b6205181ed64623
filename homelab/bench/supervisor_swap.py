"""``homelab bench swap --scenario agent|prefetch``: the swaps users live, measured side by side.

agent: a model with a long context (the agent) is evicted by a small model, then asked the next
turn of the same conversation; the time to first token of that turn (``max_tokens`` 1: the
answer is the first token) through the supervisor with the prompt cache (slots saved on eviction,
restored at start), through the supervisor without it, and through llama.cpp's router mode
(``--models-max 1``) on the same models, rounds interleaved. llama-server's own ``timings``
say how much of the prompt was evaluated (``prompt_n``) and how much came from the cache
(``cache_n``).

prefetch: a cold swap whose model file is not in the page cache (``posix_fadvise(DONTNEED)``
drops it, no root needed), while the outgoing model still streams an answer (the drain), through
a supervisor with ``x-prefetch`` and one without, rounds interleaved; reported against the file
size and the disk's sequential read speed measured on the same file.

Without ``--model`` the models are written on the fly: the agent is the ``small`` shape (so
prefill takes seconds on a CPU), the prefetch model a ``large`` one (~800 MB, so reading it
takes long enough to see).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from ..address import free_port_below_ephemeral
from ..errors import HomelabError

if TYPE_CHECKING:
    from ..cli import CLI
from .supervisor import (
    Setup,
    _common,
    _presets,
    _process,
    _router_argv,
    _serve_argv,
    _session,
    _unload_all,
    _wait_healthy,
    _workdir,
    cmd_bench_swap,
)

AGENT_ARGS = "-c 16384 -np 1"
SCENARIO_ARGS = "-c 4096 -np 1"
LARGE_SHAPE: dict[str, Any] = {"n_layer": 8, "n_embd": 2048, "n_head": 16, "n_head_kv": 4, "n_ff": 5632, "dtype": "f16"}
"""~820 MB: long enough to read from disk that a prefetch shows."""
TURN = "\nuser: and now the next step, please.\n"


def _conversation(chars: int) -> str:
    """An agent's context: ``chars`` characters (one token each with the byte vocabulary)."""
    line = "tool output: file src/module_{i}.py has {i} lines; the plan continues with step {i}.\n"
    text, i = "", 0
    while len(text) < chars:
        text += line.format(i=i)
        i += 1
    return text[:chars]


def _models(args: argparse.Namespace, workdir: Path, big: dict[str, Any]) -> tuple[Path, Path]:
    """(the big model, the small one): --model twice, or written on the fly."""
    given = [Path(m).expanduser().resolve() for m in (args.model or [])]
    for model in given:
        if not model.is_file():
            raise HomelabError(f"--model {model}: no such GGUF file")
    if given:
        if len(given) < 2:
            raise HomelabError("this scenario needs two models: --model BIG --model SMALL")
        return given[0], given[1]
    from ..testing.tiny_gguf import TinySpec, write_tiny_llama

    logging.getLogger("gguf").setLevel(logging.WARNING)
    name = "big-" + "-".join(f"{k}{v}" for k, v in sorted(big.items()))
    big_path = workdir / f"{name}.gguf"
    if not big_path.is_file():
        write_tiny_llama(big_path, TinySpec(seed=7, name="big", **big))
    small = write_tiny_llama(workdir / "small.gguf", TinySpec(seed=8, name="small"))
    os.sync()  # a dirty page cannot be dropped: the cold read must come from the disk
    return big_path, small


def _config(setup: Setup, path: Path, entries: dict[str, tuple[Path, str, str]], top: str = "") -> None:
    """A supervisor config: name -> (model, extra llama-server args, extra YAML for the model)."""
    lines = [f"startPort: {free_port_below_ephemeral()}", "healthCheckTimeout: 300", *([top] if top else []), "models:"]
    for name, (model, extra, yaml_extra) in entries.items():
        lines += [
            f"  {name}:",
            f"    cmd: {shlex.quote(str(setup.server))} -m {shlex.quote(str(model))} "
            f"--host 127.0.0.1 --port ${{PORT}} {extra}",
            "    proxy: http://127.0.0.1:${PORT}",
            "    concurrencyLimit: 1000",
        ]
        lines += [f"    {line}" for line in yaml_extra.splitlines() if line]
    path.write_text("\n".join(lines) + "\n")


async def _ask(s: aiohttp.ClientSession, url: str, model: str, prompt: str) -> tuple[float, dict[str, Any]]:
    """(seconds to the answer's only token, llama-server's timings)."""
    started = time.perf_counter()
    async with s.post(
        url + "/v1/chat/completions",
        json={"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]},
    ) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise HomelabError(f"{url} {model}: HTTP {resp.status}: {str(body)[:300]}")
    return time.perf_counter() - started, body.get("timings") or {}


async def _first_token(s: aiohttp.ClientSession, url: str, model: str) -> float:
    """Seconds to one token from a one-character prompt: the least compute a request can ask."""
    started = time.perf_counter()
    async with s.post(url + "/v1/completions", json={"model": model, "prompt": "a", "max_tokens": 1}) as resp:
        await resp.read()
        if resp.status != 200:
            raise HomelabError(f"{url} {model}: HTTP {resp.status}")
    return time.perf_counter() - started


async def _load_seconds(s: aiohttp.ClientSession, url: str, model: str) -> float:
    """The supervisor's running total of spawn -> ready over ``model``'s starts: the load alone,
    without the drain (whose length varies with the machine's load) and without compute; the
    difference around one swap is that swap's load."""
    async with s.get(url + "/metrics") as resp:
        text = await resp.text()
    prefix = f'homelab_time_to_ready_seconds_sum{{model="{model}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


# --------------------------------------------------------------------------- (a) agent


async def bench_agent(setup: Setup, rounds: int, chars: int, agent_args: str) -> dict[str, Any]:
    big, small = setup.models
    w = setup.workdir
    extra = " ".join(shlex.quote(a) for a in setup.server_args)
    config = w / "agent-config.yaml"
    _config(
        setup,
        config,
        {
            "agent-cached": (big, agent_args, "x-promptCache: true"),
            "agent-plain": (big, agent_args, "x-promptCache: false"),
            "small": (small, extra, "x-promptCache: false"),
        },
        top="x-prefetch: false",
    )
    presets = w / "agent-presets.ini"
    # router mode has one set of defaults: the agent's (the small model does not mind a larger context)
    _presets(replace(setup, server_args=shlex.split(agent_args)), presets)
    context = _conversation(chars)
    urls = {
        "supervisor": f"http://127.0.0.1:{free_port_below_ephemeral()}",
        "router": f"http://127.0.0.1:{free_port_below_ephemeral()}",
    }
    paths = {
        "cached": ("supervisor", "agent-cached", "small"),
        "plain": ("supervisor", "agent-plain", "small"),
        "router": ("router", "m0", "m1"),
    }
    ttft: dict[str, list[float]] = {p: [] for p in paths}
    timings: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    sup_port, router_port = (int(u.rsplit(":", 1)[1]) for u in urls.values())
    with (
        _process(_serve_argv(config, sup_port), w / "agent-serve.log") as sup,
        _process(_router_argv(setup, presets, router_port, 1), w / "agent-router.log") as router,
    ):
        async with _session() as s:
            await _wait_healthy(s, urls["supervisor"], sup, w / "agent-serve.log", poll=0.05)
            await _wait_healthy(s, urls["router"], router, w / "agent-router.log", poll=0.05)
            for i in range(rounds):
                order = list(paths)[i % 3 :] + list(paths)[: i % 3]
                for path in order:
                    front, agent, other = paths[path]
                    url = urls[front]
                    turn = f"{context}{TURN}(round {i})"
                    await _ask(s, url, agent, turn)  # the agent works: its context is in the slot
                    await _ask(s, url, other, "hello")  # the small model evicts it
                    seconds, t = await _ask(s, url, agent, turn + TURN)  # the agent's next turn
                    ttft[path].append(seconds)
                    timings[path].append(t)
                    await _unload_all(s, front, url, ["m0", "m1"] if front == "router" else [])
    return {
        path: {
            "ttft_ms": 1000 * statistics.median(v),
            "min_ms": 1000 * min(v),
            "max_ms": 1000 * max(v),
            "prompt_n": statistics.median(t.get("prompt_n", 0) for t in timings[path]),
            "cache_n": statistics.median(t.get("cache_n", 0) for t in timings[path]),
        }
        for path, v in ttft.items()
    }


# --------------------------------------------------------------------------- (b) prefetch


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_through(path: Path) -> int:
    """Read ``path`` front to back in 8 MiB reads (into the page cache); returns its bytes."""
    total = 0
    with path.open("rb", buffering=0) as f:
        buffer = bytearray(8 << 20)
        while n := f.readinto(buffer):
            total += n
    return total


def disk_read_speed(path: Path) -> float:
    """Bytes per second reading ``path`` cold, front to back, in 8 MiB reads."""
    drop_from_page_cache(path)
    started = time.perf_counter()
    total = read_through(path)
    seconds = time.perf_counter() - started
    drop_from_page_cache(path)
    return total / seconds


@contextlib.contextmanager
def _two_supervisors(
    setup: Setup, big: Path, small: Path
) -> Iterator[tuple[dict[str, str], list[subprocess.Popen[bytes]]]]:
    w = setup.workdir
    extra = " ".join(shlex.quote(a) for a in setup.server_args)
    urls, procs = {}, []
    with contextlib.ExitStack() as stack:
        for mode, setting in (("prefetch", "x-prefetch: {reserveMiB: 512}"), ("no-prefetch", "x-prefetch: false")):
            config = w / f"{mode}-config.yaml"
            # no warmup pass: the first request's pages are the load's reads, with little compute on top
            _config(
                setup,
                config,
                {
                    "big": (big, f"{extra} --no-warmup", "x-promptCache: false"),
                    "small": (small, extra, "x-promptCache: false"),
                },
                top=setting,
            )
            port = free_port_below_ephemeral()
            urls[mode] = f"http://127.0.0.1:{port}"
            procs.append(stack.enter_context(_process(_serve_argv(config, port), w / f"{mode}-serve.log")))
        yield urls, procs


async def _drain_stream(s: aiohttp.ClientSession, url: str, model: str, tokens: int) -> None:
    async with s.post(
        url + "/v1/chat/completions",
        json={
            "model": model,
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
            "messages": [{"role": "user", "content": "go on"}],
        },
        headers={"Connection": "close"},
    ) as resp:
        await resp.read()


async def bench_prefetch(setup: Setup, rounds: int, drain_tokens: int) -> dict[str, Any]:
    import asyncio

    big, small = setup.models
    speed = disk_read_speed(big)
    modes = ("prefetch", "no-prefetch", "warm")
    """warm: the file left in the page cache (no prefetch needed): what a prefetch can reach."""
    swap: dict[str, list[float]] = {m: [] for m in modes}
    ready: dict[str, list[float]] = {m: [] for m in modes}
    w = setup.workdir
    with _two_supervisors(setup, big, small) as (urls, procs):
        async with _session() as s:
            for (mode, url), proc in zip(urls.items(), procs, strict=True):
                await _wait_healthy(s, url, proc, w / f"{mode}-serve.log", poll=0.05)
            for i in range(rounds):
                for mode in modes[i % 3 :] + modes[: i % 3]:
                    url = urls["no-prefetch" if mode == "warm" else mode]
                    await _ask(s, url, "small", "hello")  # the outgoing model
                    if mode == "warm":
                        read_through(big)
                    else:
                        drop_from_page_cache(big)
                    before = await _load_seconds(s, url, "big")
                    stream = asyncio.ensure_future(_drain_stream(s, url, "small", drain_tokens))
                    await asyncio.sleep(0.05)  # the stream is under way: the swap has to wait for it
                    seconds = await _first_token(s, url, "big")
                    await stream
                    swap[mode].append(seconds)
                    ready[mode].append(await _load_seconds(s, url, "big") - before)
                    await _unload_all(s, "supervisor", url, [])
    size = big.stat().st_size
    # Each round measured both, next to each other: its own difference is free of the drift
    # between rounds that makes the two ranges overlap.
    saved = [cold - fetched for cold, fetched in zip(ready["no-prefetch"], ready["prefetch"], strict=True)]
    return {
        "file_mib": size / (1 << 20),
        "disk_mb_s": speed / 1e6,
        "read_s": size / speed,
        "paired_saving_ms": 1000 * statistics.median(saved),
        "rounds_faster": sum(1 for d in saved if d > 0),
        **{
            mode: {
                "first_token_ms": 1000 * statistics.median(v),
                "min_ms": 1000 * min(v),
                "max_ms": 1000 * max(v),
                "ready_ms": 1000 * statistics.median(ready[mode]),
                "ready_min_ms": 1000 * min(ready[mode]),
                "ready_max_ms": 1000 * max(ready[mode]),
            }
            for mode, v in swap.items()
        },
    }


# --------------------------------------------------------------------------- CLI


def run_scenarios(args: argparse.Namespace, workdir: Path) -> None:
    import asyncio

    # lazily: bench.supervisor pulls in aiohttp, and every `homelab` command imports this module
    from .supervisor import _setup

    server = _setup(args, workdir, 0).server  # checks --server (and --model)
    server_args = shlex.split(args.scenario_args)
    if args.scenario in ("agent", "all"):
        models = _models(args, workdir, {"context_length": 32768})
        setup = Setup(server, list(models), server_args, workdir)
        print(
            f"bench swap, agent: {models[0].name} (agent, {args.agent_chars} characters of context, "
            f"{args.agent_args}) evicted by {models[1].name}, {args.rounds} rounds"
        )
        r = asyncio.run(bench_agent(setup, args.rounds, args.agent_chars, args.agent_args))
        print(
            "  time to first token of the agent's next turn after a swap (median, min-max); "
            "llama-server timings: prompt_n evaluated, cache_n reused"
        )
        for path, label in (
            ("cached", "supervisor, prompt cache"),
            ("plain", "supervisor, no cache"),
            ("router", "router mode"),
        ):
            v = r[path]
            print(
                f"  {label:<26} {v['ttft_ms']:9.1f} ms ({v['min_ms']:.0f}-{v['max_ms']:.0f})  "
                f"prompt_n {v['prompt_n']:.0f}  cache_n {v['cache_n']:.0f}"
            )
        print(
            f"  prompt cache / no cache: {r['cached']['ttft_ms'] / r['plain']['ttft_ms']:.3f}x; "
            f"/ router mode: {r['cached']['ttft_ms'] / r['router']['ttft_ms']:.3f}x"
        )
    if args.scenario in ("prefetch", "all"):
        models = _models(args, workdir, LARGE_SHAPE)
        setup = Setup(server, list(models), server_args, workdir)
        print(
            f"bench swap, prefetch: cold {models[0].name} (dropped from the page cache) replaces "
            f"{models[1].name} while it streams {args.drain_tokens} tokens, {args.rounds} rounds"
        )
        r = asyncio.run(bench_prefetch(setup, args.rounds, args.drain_tokens))
        print(
            f"  file {r['file_mib']:.0f} MiB; disk {r['disk_mb_s']:.0f} MB/s cold sequential "
            f"(the file in {r['read_s'] * 1000:.0f} ms)"
        )
        print(
            "  median (min-max) of: spawn -> ready (the load, from /metrics), request -> first token "
            "(drain, stop, load, one token); warm = the file already in the page cache"
        )
        for mode in ("prefetch", "no-prefetch", "warm"):
            v = r[mode]
            print(
                f"  {mode:<12} {v['ready_ms']:8.1f} ms ({v['ready_min_ms']:.0f}-{v['ready_max_ms']:.0f})  "
                f"{v['first_token_ms']:8.1f} ms ({v['min_ms']:.0f}-{v['max_ms']:.0f})"
            )
        for what, key in (("the load", "ready_ms"), ("first token", "first_token_ms")):
            gain = r["no-prefetch"][key] - r["prefetch"][key]
            print(
                f"  prefetch saves {gain:.0f} ms to {what} "
                f"({100 * gain / (r['read_s'] * 1000):.0f}% of the file's read time at disk speed)"
            )
        print(
            f"  paired by round: the load was faster with the prefetch in {r['rounds_faster']} of "
            f"{args.rounds} rounds, by {r['paired_saving_ms']:.0f} ms (median of the rounds' differences)"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=("cold", "agent", "prefetch", "all"),
        default="cold",
        help="cold: the supervisor's share of a cold swap (default); agent: a long-context model "
        "evicted and back, with/without the prompt cache and router mode; prefetch: a cold "
        "swap from disk with/without prefetch; all: agent and prefetch. With --model, agent "
        "and prefetch take --model BIG --model SMALL",
    )
    parser.add_argument(
        "--agent-chars",
        type=int,
        default=6000,
        help="characters of agent context (a token each with the generated models; default 6000)",
    )
    parser.add_argument(
        "--agent-args", default=AGENT_ARGS, help=f"llama-server arguments of the agent model (default {AGENT_ARGS!r})"
    )
    parser.add_argument(
        "--drain-tokens",
        type=int,
        default=1024,
        help="tokens the outgoing model streams while the swap waits (default 1024)",
    )
    parser.add_argument(
        "--scenario-args",
        default=SCENARIO_ARGS,
        help=f"llama-server arguments of the models in agent (the small one) and prefetch (default {SCENARIO_ARGS!r})",
    )


def cmd_swap(args: argparse.Namespace) -> int:
    """``homelab bench swap``: the cold swap (the default scenario), or the agent / prefetch ones."""
    if args.scenario == "cold":
        return cmd_bench_swap(args)
    with _workdir(args) as tmp:
        run_scenarios(args, Path(tmp))
    return 0


def register(cli: CLI) -> None:
    swap = cli.benchmark("swap", cmd_swap, "the supervisor's share of a swap (cold, agent, prefetch), vs router mode")
    _common(swap)
    swap.add_argument("--rounds", type=int, default=10, help="swaps to time per mode (default 10)")
    add_arguments(swap)
