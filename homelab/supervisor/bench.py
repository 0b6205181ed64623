"""``homelab bench proxy`` and ``homelab bench swap``: what the supervisor costs, in numbers.

proxy: the same real llama-server instance is called directly and through ``homelab serve``
(the supervisor's own backend, once loaded, is also called on its own port), and llama.cpp's
router mode (the same binary without ``-m``, with a presets file) serves the same model.
Short non-streaming requests give p50/p99 latency; streaming clients (1, 8, 64 at once) give
token throughput. Requests to the three paths are interleaved so machine noise hits all alike.

swap: request -> first token for a cold model, alternating two models that cannot coexist,
minus the backend's own cold start (spawn -> /health 200 -> first token, measured directly with
1 ms polling): the rest is the supervisor's share (eviction included). Router mode
(``--models-max 1``) is measured the same way.

Without ``--model`` both write tiny GGUF models on the fly; pass your own GGUFs (and
``--server-args``) to measure your box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from ..errors import HomelabError
from .process import spawn_guarded

if TYPE_CHECKING:
    from ..cli import CLI

DEFAULT_SERVER_ARGS = "-c 8192 -np 16"
STREAM_HEADERS = {"Connection": "close"}
"""llama-server closes the connection after each stream although it announces keep-alive, so a
reused one would fail: every path opens a connection per stream (the supervisor does the same
towards its backend)."""
PROMPT = [{"role": "user", "content": "Count slowly from one to one hundred."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Setup:
    server: Path
    models: list[Path]
    server_args: list[str]
    workdir: Path


def _setup(args: argparse.Namespace, workdir: Path, count: int) -> Setup:
    server = Path(args.server).expanduser()
    if not (server.is_file() and os.access(server, os.X_OK)):
        raise HomelabError(f"--server {server}: not an executable llama-server")
    models = [Path(m).expanduser().resolve() for m in (args.model or [])]
    for model in models:
        if not model.is_file():
            raise HomelabError(f"--model {model}: no such GGUF file")
    if not models:
        import logging

        from ..gguf.tiny import TinySpec, write_tiny_llama

        logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer's chatter
        models = [write_tiny_llama(workdir / f"tiny{i}.gguf", TinySpec(seed=i, name=f"tiny{i}"))
                  for i in range(count)]
    if len(models) < count:
        raise HomelabError(f"this benchmark needs {count} models; pass --model {count} times")
    return Setup(server.resolve(), models[:count], shlex.split(args.server_args), workdir)


def _names(setup: Setup) -> list[str]:
    return [f"m{i}" for i in range(len(setup.models))]


def _supervisor_config(setup: Setup, path: Path) -> None:
    args = " ".join(shlex.quote(a) for a in setup.server_args)
    lines = [f"startPort: {free_port()}", "healthCheckTimeout: 300", "models:"]
    for name, model in zip(_names(setup), setup.models, strict=True):
        lines += [f"  {name}:",
                  f"    cmd: {shlex.quote(str(setup.server))} -m {shlex.quote(str(model))} "
                  f"--host 127.0.0.1 --port ${{PORT}} {args}",
                  "    proxy: http://127.0.0.1:${PORT}",
                  "    concurrencyLimit: 1000"]
    path.write_text("\n".join(lines) + "\n")


def _presets(setup: Setup, path: Path) -> None:
    """Router-mode presets: long flag names without dashes, one section per model."""
    defaults: list[str] = []
    flags = list(setup.server_args)
    short = {"-c": "ctx-size", "-np": "parallel", "-t": "threads", "-ngl": "n-gpu-layers", "-fa": "flash-attn",
             "-b": "batch-size", "-ub": "ubatch-size", "-ctk": "cache-type-k", "-ctv": "cache-type-v"}
    while flags:
        flag = flags.pop(0)
        key = short.get(flag, flag.lstrip("-"))
        value = flags.pop(0) if flags and not flags[0].startswith("-") else "true"
        defaults.append(f"{key} = {value}")
    text = "[*]\n" + "\n".join(defaults) + "\n"
    for name, model in zip(_names(setup), setup.models, strict=True):
        text += f"\n[{name}]\nmodel = {model}\n"
    path.write_text(text)


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = spawn_guarded(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _wait_healthy(s: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path,
                        timeout: float = 300, poll: float = 0.005) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise HomelabError(f"{proc.args[0]} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            async with s.get(url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    return time.perf_counter() - started
        await asyncio.sleep(poll)
    raise HomelabError(f"{url} not healthy after {timeout}s; see {log}")


async def _short(s: aiohttp.ClientSession, url: str, model: str) -> float:
    started = time.perf_counter()
    async with s.post(url + "/v1/chat/completions", json={
            "model": model, "messages": PROMPT, "max_tokens": 1}) as resp:
        await resp.read()
        if resp.status != 200:
            raise HomelabError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
    return time.perf_counter() - started


async def _stream(s: aiohttp.ClientSession, url: str, model: str, max_tokens: int) -> tuple[int, float]:
    """(tokens received, seconds to the first one)."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with s.post(url + "/v1/chat/completions", json={
            "model": model, "messages": PROMPT, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}, headers=STREAM_HEADERS) as resp:
        if resp.status != 200:
            raise HomelabError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                if not tokens:
                    first = time.perf_counter() - started
                tokens += 1
    return tokens, first


async def _throughput(s: aiohttp.ClientSession, url: str, model: str, clients: int, per_client: int,
                      max_tokens: int) -> float:
    async def client() -> int:
        return sum([(await _stream(s, url, model, max_tokens))[0] for _ in range(per_client)])

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(client() for _ in range(clients))))
    return total / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=600)) as s:
        yield s


def _serve_argv(config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "homelab.cli", "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--drain-timeout", "2"]


def _router_argv(setup: Setup, presets: Path, port: int, models_max: int) -> list[str]:
    return [str(setup.server), "--models-preset", str(presets), "--models-max", str(models_max),
            "--host", "127.0.0.1", "--port", str(port)]


async def _compare(s: aiohttp.ClientSession, front: str, direct: str, requests: int, levels: list[int],
                   max_tokens: int) -> dict[str, Any]:
    """Interleave requests to ``front`` (a proxy) and ``direct`` (the backend behind it)."""
    paths = {"direct": direct, "front": front}
    for url in paths.values():  # warm connections and caches
        for _ in range(10):
            await _short(s, url, "m0")
    lat: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(requests):
        for name, url in paths.items():
            lat[name].append(await _short(s, url, "m0"))
    out: dict[str, Any] = {"latency_ms": {p: {"p50": 1000 * percentile(v, 50), "p99": 1000 * percentile(v, 99)}
                                          for p, v in lat.items()}, "throughput": {}}
    for clients in levels:
        per_client = max(2, 64 // clients)
        rates: dict[str, list[float]] = {p: [] for p in paths}
        for _ in range(3):
            for name, url in paths.items():
                rates[name].append(await _throughput(s, url, "m0", clients, per_client, max_tokens))
        out["throughput"][clients] = {p: statistics.median(v) for p, v in rates.items()}
    return out


async def bench_proxy(setup: Setup, requests: int, levels: list[int], max_tokens: int) -> dict[str, Any]:
    """Two phases, one resident model at a time (safe on a real GPU): the supervisor against its
    own backend called directly, then router mode against its own child called directly."""
    w = setup.workdir
    config, presets = w / "config.yaml", w / "presets.ini"
    _supervisor_config(setup, config)
    _presets(setup, presets)
    results: dict[str, Any] = {}
    async with _session() as s:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with _process(_serve_argv(config, port), w / "serve.log") as sup:
            await _wait_healthy(s, url, sup, w / "serve.log", poll=0.05)
            await _short(s, url, "m0")  # loads the model
            async with s.get(url + "/running") as resp:
                direct = (await resp.json())["running"][0]["proxy"]
            results["supervisor"] = await _compare(s, url, direct, requests, levels, max_tokens)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with _process(_router_argv(setup, presets, port, 1), w / "router.log") as router:
            await _wait_healthy(s, url, router, w / "router.log", poll=0.05)
            await _short(s, url, "m0")
            async with s.get(url + "/models") as resp:
                listed = (await resp.json())["data"]
            args = next(m for m in listed if m["id"] == "m0")["status"]["args"]
            direct = f"http://127.0.0.1:{args[args.index('--port') + 1]}"
            results["router"] = await _compare(s, url, direct, requests, levels, max_tokens)
    return results


async def _direct_cold(s: aiohttp.ClientSession, setup: Setup, index: int) -> tuple[float, float]:
    """(spawn -> healthy, spawn -> first token) of a fresh llama-server, measured directly."""
    port = free_port()
    argv = [str(setup.server), "-m", str(setup.models[index]), "--host", "127.0.0.1", "--port", str(port),
            *setup.server_args]
    log = setup.workdir / f"direct{index}.log"
    started = time.perf_counter()
    with _process(argv, log) as proc:
        healthy = await _wait_healthy(s, f"http://127.0.0.1:{port}", proc, log, poll=0.001)
        await _stream(s, f"http://127.0.0.1:{port}", "x", 1)
        first_token = time.perf_counter() - started
    return healthy, first_token


async def _unload_all(s: aiohttp.ClientSession, mode: str, url: str, names: list[str]) -> None:
    if mode == "supervisor":
        async with s.post(url + "/unload") as resp:
            await resp.read()
        return
    for name in names:  # router mode
        async with s.post(url + "/models/unload", json={"model": name}) as resp:
            await resp.read()
    for _ in range(600):  # the router unloads asynchronously
        async with s.get(url + "/models") as resp:
            listed = (await resp.json())["data"]
        if all(m["status"]["value"] == "unloaded" for m in listed):
            return
        await asyncio.sleep(0.02)


async def bench_swap(setup: Setup, rounds: int) -> dict[str, Any]:
    """Rounds interleave the three measurements; at any moment one model is resident on the
    whole machine (safe on a real GPU): per mode, load the other model (untimed), time the
    request for this one (eviction + start + first token), unload everything (untimed)."""
    w = setup.workdir
    config, presets = w / "config.yaml", w / "presets.ini"
    _supervisor_config(setup, config)
    _presets(setup, presets)
    names = _names(setup)
    healthy: list[float] = []
    cold: list[float] = []
    swap: dict[str, list[float]] = {"supervisor": [], "router": []}
    share: dict[str, list[float]] = {"supervisor": [], "router": []}
    ports = {"supervisor": free_port(), "router": free_port()}
    urls = {m: f"http://127.0.0.1:{p}" for m, p in ports.items()}
    with _process(_serve_argv(config, ports["supervisor"]), w / "serve.log") as sup, \
            _process(_router_argv(setup, presets, ports["router"], 1), w / "router.log") as router:
        async with _session() as s:
            await _wait_healthy(s, urls["supervisor"], sup, w / "serve.log", poll=0.05)
            await _wait_healthy(s, urls["router"], router, w / "router.log", poll=0.05)
            for i in range(rounds):
                target, other = i % 2, 1 - i % 2
                h, c = await _direct_cold(s, setup, target)
                healthy.append(h)
                cold.append(c)
                for mode, url in urls.items():
                    await _stream(s, url, names[other], 1)
                    _, first = await _stream(s, url, names[target], 1)
                    await _unload_all(s, mode, url, names)
                    swap[mode].append(first)
                    share[mode].append(first - c)
    results: dict[str, Any] = {"direct_healthy_ms": 1000 * statistics.median(healthy),
                               "direct_cold_first_token_ms": 1000 * statistics.median(cold)}
    for mode in swap:
        results[mode] = {"first_token_ms": 1000 * statistics.median(swap[mode]),
                         "share_ms": 1000 * statistics.median(share[mode])}
    return results


def _workdir(args: argparse.Namespace) -> contextlib.AbstractContextManager[str]:
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(args.keep)
    return tempfile.TemporaryDirectory(prefix="homelab-bench-")


def cmd_bench_proxy(args: argparse.Namespace) -> int:
    with _workdir(args) as tmp:
        setup = _setup(args, Path(tmp), 1)
        levels = [int(c) for c in args.clients.split(",")]
        print(f"bench proxy: {setup.server} on {setup.models[0].name} ({' '.join(setup.server_args)})")
        r = asyncio.run(bench_proxy(setup, args.requests, levels, args.tokens))
    print(f"\nshort non-streaming requests ({args.requests} per path, max_tokens 1), ms:")
    print(f"  {'front':<11} {'direct p50':>10} {'front p50':>10} {'added p50':>10} {'direct p99':>10} "
          f"{'front p99':>10} {'added p99':>10}")
    for front, phase in r.items():
        d, f = phase["latency_ms"]["direct"], phase["latency_ms"]["front"]
        print(f"  {front:<11} {d['p50']:10.2f} {f['p50']:10.2f} {f['p50'] - d['p50']:+10.2f} "
              f"{d['p99']:10.2f} {f['p99']:10.2f} {f['p99'] - d['p99']:+10.2f}")
    print(f"\nstreaming throughput, tokens/s (max_tokens {args.tokens}); ratio = through the front / direct:")
    print(f"  {'clients':>7} {'sup direct':>11} {'supervisor':>11} {'ratio':>7} {'rtr direct':>11} "
          f"{'router':>9} {'ratio':>7}")
    for clients in levels:
        sv, rt = r["supervisor"]["throughput"][clients], r["router"]["throughput"][clients]
        print(f"  {clients:>7} {sv['direct']:11.0f} {sv['front']:11.0f} {sv['front'] / sv['direct']:7.3f} "
              f"{rt['direct']:11.0f} {rt['front']:9.0f} {rt['front'] / rt['direct']:7.3f}")
    return 0


def cmd_bench_swap(args: argparse.Namespace) -> int:
    with _workdir(args) as tmp:
        setup = _setup(args, Path(tmp), 2)
        print(f"bench swap: {setup.server}, models {setup.models[0].name} and {setup.models[1].name}, "
              f"{args.rounds} rounds")
        r = asyncio.run(bench_swap(setup, args.rounds))
    print(f"\nbackend alone (median): spawn -> healthy {r['direct_healthy_ms']:.1f} ms, "
          f"spawn -> first token {r['direct_cold_first_token_ms']:.1f} ms")
    for mode in ("supervisor", "router"):
        v = r[mode]
        print(f"{mode:<10}: request -> first token on a swap {v['first_token_ms']:.1f} ms; "
              f"its share (median of per-round differences) {v['share_ms']:+.1f} ms")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="llama-server binary")
    parser.add_argument("--model", action="append", metavar="GGUF",
                        help="a GGUF model (repeat); default: tiny models written on the fly")
    parser.add_argument("--server-args", default=DEFAULT_SERVER_ARGS,
                        help=f"extra llama-server arguments for every path (default {DEFAULT_SERVER_ARGS!r})")
    parser.add_argument("--keep", metavar="DIR", help="keep configs and logs in DIR")


def register(cli: CLI) -> None:
    proxy = cli.benchmark("proxy", cmd_bench_proxy,
                          "added latency and streaming throughput of the supervisor vs direct and router mode")
    _common(proxy)
    proxy.add_argument("--requests", type=int, default=200, help="short requests per path (default 200)")
    proxy.add_argument("--clients", default="1,8,64", help="concurrent streaming clients (default 1,8,64)")
    proxy.add_argument("--tokens", type=int, default=64, help="tokens per streamed answer (default 64)")
    swap = cli.benchmark("swap", cmd_bench_swap, "the supervisor's share of a cold swap, vs router mode")
    _common(swap)
    swap.add_argument("--rounds", type=int, default=10, help="swaps to time per mode (default 10)")
