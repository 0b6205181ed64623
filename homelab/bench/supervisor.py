"""``homelab bench proxy`` and ``homelab bench swap``: what the supervisor costs, in numbers.

proxy: ``homelab serve`` and llama.cpp's router mode (the same binary without ``-m``, with a
presets file) serve the same model; each front's own backend llama-server is also called
directly on its port. A third front, the relay floor (:mod:`.relay_floor`), passes requests to
the supervisor's backend through the supervisor's relay and does nothing else: the supervisor's
figures less the floor's are what its own work costs. Every path uses the same client code and
is interleaved (the order rotates every request and every round), so machine noise hits them
alike. Short non-streaming requests give p50/p99 latency; streaming clients (1, 8, 64 at once,
every stream ``max_tokens`` long with ``ignore_eos``, tokens counted from the final ``usage``)
give token throughput, the median of ``--rounds`` rounds. The CPU time of each front process
(and of the backends, for scale) is read around the phases that used it, so the proxy's cost
shows even when the machine is saturated and throughput ratios drown in noise. ``--pin`` puts
the backends on some CPUs and the fronts plus the load generator on the others (a GPU box, where
generation does not take every core); ``--one-at-a-time`` keeps one model resident (big models).

swap: request -> first token for a cold model, alternating two models that cannot coexist,
minus the backend's own cold start (spawn -> /health 200 -> first token, measured directly with
1 ms polling): the rest is the supervisor's share (eviction included). Router mode
(``--models-max 1``) is measured the same way.

Without ``--model`` both write tiny GGUF models on the fly (``--shape``); pass your own GGUFs
(and ``--server-args``) to measure your box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp

from ..address import free_port_below_ephemeral
from ..errors import HomelabError
from ..supervisor.process import BACKEND_KEY_ENV, backend_key_of, spawn_guarded

if TYPE_CHECKING:
    from ..cli import CLI

DEFAULT_SERVER_ARGS = "-c 8192 -np 16"
STREAM_HEADERS = {"Connection": "close"}
"""llama-server closes the connection after each stream although it announces keep-alive, so a
reused one would fail: every path opens a connection per stream (the supervisor does the same
towards its backend)."""
FLOOR = "relay floor"
"""The front that only relays (:mod:`.relay_floor`): a second process hop through aiohttp, no more."""
PROMPT = [{"role": "user", "content": "Count slowly from one to one hundred."}]
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {},  # 1.3 MB: thousands of tokens/s on one core, the proxy's share looks biggest
    "small": {"n_layer": 4, "n_embd": 512, "n_head": 8, "n_head_kv": 4, "n_ff": 1536, "dtype": "f16"},
}
"""Shapes of the models written on the fly (``--shape``) when no ``--model`` is given."""


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
        # Deferred: the GGUF writer loads gguf and numpy, and every `homelab` command imports this
        # module to register the benchmark; only a run without --model needs it.
        from ..testing.tiny_gguf import TinySpec, write_tiny_llama

        logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer's chatter
        shape = SHAPES[args.shape]
        models = [
            write_tiny_llama(workdir / f"{args.shape}{i}.gguf", TinySpec(seed=i, name=f"{args.shape}{i}", **shape))
            for i in range(count)
        ]
    if len(models) < count:
        raise HomelabError(f"this benchmark needs {count} models; pass --model {count} times")
    return Setup(server.resolve(), models[:count], shlex.split(args.server_args), workdir)


def _names(setup: Setup) -> list[str]:
    return [f"m{i}" for i in range(len(setup.models))]


def _supervisor_config(setup: Setup, path: Path) -> None:
    args = " ".join(shlex.quote(a) for a in setup.server_args)
    lines = [f"startPort: {free_port_below_ephemeral()}", "healthCheckTimeout: 300", "models:"]
    for name, model in zip(_names(setup), setup.models, strict=True):
        lines += [
            f"  {name}:",
            f"    cmd: {shlex.quote(str(setup.server))} -m {shlex.quote(str(model))} "
            f"--host 127.0.0.1 --port ${{PORT}} {args}",
            "    proxy: http://127.0.0.1:${PORT}",
            "    concurrencyLimit: 1000",
        ]
    path.write_text("\n".join(lines) + "\n")


def _presets(setup: Setup, path: Path) -> None:
    """Router-mode presets: long flag names without dashes, one section per model."""
    defaults: list[str] = []
    flags = list(setup.server_args)
    short = {
        "-c": "ctx-size",
        "-np": "parallel",
        "-t": "threads",
        "-ngl": "n-gpu-layers",
        "-fa": "flash-attn",
        "-b": "batch-size",
        "-ub": "ubatch-size",
        "-ctk": "cache-type-k",
        "-ctv": "cache-type-v",
    }
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
def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = spawn_guarded(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
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


async def _wait_healthy(
    s: aiohttp.ClientSession,
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 300,
    poll: float = 0.005,
) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise HomelabError(f"{cast('list[str]', proc.args)[0]} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            async with s.get(url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    return time.perf_counter() - started
        await asyncio.sleep(poll)
    raise HomelabError(f"{url} not healthy after {timeout}s; see {log}")


async def _short(s: aiohttp.ClientSession, url: str, model: str, auth: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    async with s.post(
        url + "/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 1}, headers=auth
    ) as resp:
        await resp.read()
        if resp.status != 200:
            raise HomelabError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
    return time.perf_counter() - started


async def _stream(
    s: aiohttp.ClientSession, url: str, model: str, max_tokens: int, auth: dict[str, str] | None = None
) -> tuple[int, float]:
    """(tokens generated, seconds to the first content event). Tokens come from the final
    ``usage`` event: content events undercount them (llama-server holds back the bytes of an
    incomplete UTF-8 character), and every path must be credited the same work."""
    started = time.perf_counter()
    first = 0.0
    events = 0
    usage = b""
    async with s.post(
        url + "/v1/chat/completions",
        json={
            "model": model,
            "messages": PROMPT,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        },
        headers={**STREAM_HEADERS, **(auth or {})},
    ) as resp:
        if resp.status != 200:
            raise HomelabError(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            if b'"content"' in line:
                if not events:
                    first = time.perf_counter() - started
                events += 1
            if b'"usage":{' in line or b'"usage": {' in line:
                usage = line
    if usage:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(usage[5:])["usage"]["completion_tokens"]), first
    return events, first


async def _throughput(
    s: aiohttp.ClientSession,
    url: str,
    model: str,
    clients: int,
    per_client: int,
    max_tokens: int,
    auth: dict[str, str] | None = None,
) -> tuple[float, int]:
    """(tokens per second, tokens) of ``clients`` concurrent clients, each streaming
    ``per_client`` answers one after the other."""

    async def client() -> int:
        return sum([(await _stream(s, url, model, max_tokens, auth))[0] for _ in range(per_client)])

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(client() for _ in range(clients))))
    return total / (time.perf_counter() - started), total


@contextlib.asynccontextmanager
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
    ) as s:
        yield s


def _serve_argv(config: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "homelab.cli",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--drain-timeout",
        "2",
    ]


def _router_argv(setup: Setup, presets: Path, port: int, models_max: int) -> list[str]:
    return [
        str(setup.server),
        "--models-preset",
        str(presets),
        "--models-max",
        str(models_max),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@dataclass
class Front:
    """A front (the supervisor or router mode) and the backend behind it, called directly."""

    name: str
    url: str
    direct: str
    pid: int
    backend_pid: int
    key: str | None = None
    """The key the backend takes (a supervisor's backend); sent on its direct path only."""


_libc = ctypes.CDLL(None, use_errno=True)


def _cpu_seconds(pid: int) -> float:
    """CPU time of one process (not its children), threads that have exited included: the
    kernel's nanosecond clock of the whole process (``clock_getcpuclockid``). A front that runs
    work on short-lived threads (router mode's connection threads) must not look cheaper. Summing
    /proc's counters instead, as this did before, mixed nanoseconds (live threads) with clock ticks
    (threads gone): a thread ending between two readings could turn the difference negative
    (-2.2 ms per request over 3 requests, seen in a test). /proc's ticks only if the clock fails."""
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:  # returns the error, not -1
        with contextlib.suppress(OSError):
            return time.clock_gettime_ns(clock.value) / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _child_running(parent: int, exe: Path) -> int:
    """The PID of ``parent``'s child process that runs ``exe`` (a backend llama-server)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and Path(os.readlink(entry / "exe")) == exe:
                return int(entry.name)
    raise HomelabError(f"no {exe.name} child of process {parent} found")


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a running process (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


@dataclass
class Pinning:
    backend: set[int]
    front: set[int]

    def describe(self) -> str:
        return (
            f"pinned: llama-server backends on CPUs {sorted(self.backend)}, supervisor, router "
            f"front and this load generator on CPUs {sorted(self.front)}"
        )


def _rotated(items: list[Any], i: int) -> list[Any]:
    return items[i % len(items) :] + items[: i % len(items)]


async def _measure(
    s: aiohttp.ClientSession, fronts: list[Front], requests: int, levels: list[int], max_tokens: int, rounds: int
) -> dict[str, Any]:
    """Every path (each front and its backend called directly) with the same client code,
    interleaved: the order rotates every request and every round, so machine noise and
    position effects hit all paths alike. CPU seconds are read from /proc for the front
    processes (and the backends, for scale) around the phases that used them."""
    paths = [(f.name + " direct", f.direct) for f in fronts] + [(f.name, f.url) for f in fronts]
    # each supervisor's backend has its own key: two supervisors (--baseline) cannot share one header
    auth = {f.direct: {"Authorization": f"Bearer {f.key}"} for f in fronts if f.key}
    for _, url in paths:  # warm connections and caches
        for _ in range(10):
            await _short(s, url, "m0", auth.get(url))
    lat: dict[str, list[float]] = {p: [] for p, _ in paths}
    cpu0 = {f.name: _cpu_seconds(f.pid) for f in fronts}
    for i in range(requests):
        for name, url in _rotated(paths, i):
            lat[name].append(await _short(s, url, "m0", auth.get(url)))
    out: dict[str, Any] = {
        "latency_ms": {p: {"p50": 1000 * percentile(v, 50), "p99": 1000 * percentile(v, 99)} for p, v in lat.items()},
        "short_cpu_us": {f.name: 1e6 * (_cpu_seconds(f.pid) - cpu0[f.name]) / requests for f in fronts},
        "throughput": {},
    }
    for clients in levels:
        per_client = max(2, 64 // clients)
        rates: dict[str, list[float]] = {p: [] for p, _ in paths}
        tokens: dict[str, int] = {p: 0 for p, _ in paths}
        cpu = {p: 0.0 for p, _ in paths}
        backend_cpu = {p: 0.0 for p, _ in paths}
        owner = {p: f for f in fronts for p in (f.name, f.name + " direct")}
        for r in range(rounds):
            for name, url in _rotated(paths, r):
                front = owner[name]
                before = _cpu_seconds(front.pid), _cpu_seconds(front.backend_pid)
                rate, count = await _throughput(s, url, "m0", clients, per_client, max_tokens, auth.get(url))
                rates[name].append(rate)
                tokens[name] += count
                cpu[name] += _cpu_seconds(front.pid) - before[0]
                backend_cpu[name] += _cpu_seconds(front.backend_pid) - before[1]
        out["throughput"][clients] = {
            p: {
                "median": statistics.median(v),
                "min": min(v),
                "max": max(v),
                "tokens_per_stream": tokens[p] / (rounds * clients * per_client),
                "front_cpu_ms_per_1k": 1e6 * cpu[p] / max(1, tokens[p]),
                "backend_cpu_ms_per_1k": 1e6 * backend_cpu[p] / max(1, tokens[p]),
                # paired per round (front and its direct path ran next to each other)
                "ratio": (
                    statistics.median(a / b for a, b in zip(v, rates[owner[p].name + " direct"], strict=True))
                    if p == owner[p].name
                    else 1.0
                ),
            }
            for p, v in rates.items()
        }
    return out


async def _supervisor_front(
    s: aiohttp.ClientSession, setup: Setup, sup: subprocess.Popen[bytes], url: str, name: str = "supervisor"
) -> Front:
    await _wait_healthy(s, url, sup, setup.workdir / f"{name}.log", poll=0.05)
    await _short(s, url, "m0")  # loads the model
    async with s.get(url + "/running") as resp:
        direct = (await resp.json())["running"][0]["proxy"]
    backend = _child_running(sup.pid, setup.server)
    return Front(name, url, direct, sup.pid, backend, backend_key_of(backend))


async def _baseline_front(s: aiohttp.ClientSession, setup: Setup, sup: subprocess.Popen[bytes], url: str) -> Front:
    return await _supervisor_front(s, setup, sup, url, "baseline")


async def _floor_front(
    s: aiohttp.ClientSession, stack: contextlib.ExitStack, setup: Setup, supervisor: Front, port: int
) -> Front:
    """The relay floor (:mod:`.relay_floor`) in front of the supervisor's own backend, with that
    backend's key in its environment (as the supervisor gives it to llama-server)."""
    env = {name: value for name, value in os.environ.items() if name != BACKEND_KEY_ENV}
    if supervisor.key:
        env[BACKEND_KEY_ENV] = supervisor.key
    env["PYTHONSAFEPATH"] = "1"  # this installation's homelab, not a checkout in the working directory
    log = setup.workdir / "floor.log"
    argv = [sys.executable, "-m", "homelab.bench.relay_floor", str(port), supervisor.direct]
    proc = stack.enter_context(_process(argv, log, env))
    url = f"http://127.0.0.1:{port}"
    await _wait_healthy(s, url, proc, log, poll=0.05)
    return Front(FLOOR, url, supervisor.direct, proc.pid, supervisor.backend_pid, supervisor.key)


def _baseline_env(source: Path) -> dict[str, str]:
    """The environment that runs ``homelab serve`` from another source tree (``--baseline``)."""
    if not (source / "homelab" / "supervisor").is_dir():
        raise HomelabError(
            f"--baseline {source}: not a homelab source tree (no homelab/supervisor/ in it); "
            "make one with: git worktree add /tmp/homelab-base <commit>"
        )
    # PYTHONSAFEPATH: `python -m` puts the working directory first on sys.path, ahead of
    # PYTHONPATH; run from a checkout, the "baseline" imported that checkout's code instead.
    return {**os.environ, "PYTHONPATH": str(source.resolve()), "PYTHONSAFEPATH": "1"}


async def _router_front(s: aiohttp.ClientSession, setup: Setup, router: subprocess.Popen[bytes], url: str) -> Front:
    await _wait_healthy(s, url, router, setup.workdir / "router.log", poll=0.05)
    await _short(s, url, "m0")
    async with s.get(url + "/models") as resp:
        listed = (await resp.json())["data"]
    args = next(m for m in listed if m["id"] == "m0")["status"]["args"]
    direct = f"http://127.0.0.1:{args[args.index('--port') + 1]}"
    return Front("router", url, direct, router.pid, _child_running(router.pid, setup.server))


def _apply_pinning(fronts: list[Front], pinning: Pinning | None) -> None:
    if pinning is None:
        return
    for front in fronts:
        _pin(front.backend_pid, pinning.backend)
        _pin(front.pid, pinning.front)


async def _follow_events(s: aiohttp.ClientSession, url: str, logs: str, received: list[int]) -> None:
    """What an open dashboard does: hold /api/events and read every message (``logs``: the logs
    its Logs panel follows; ``all``: every log, as llama-swap's feed and UI)."""
    query = "" if logs == "all" else "?" + urllib.parse.urlencode({"logs": logs})
    async with s.get(url + "/api/events" + query, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        async for chunk in resp.content.iter_any():
            received[0] += len(chunk)


async def bench_proxy(
    setup: Setup,
    requests: int,
    levels: list[int],
    max_tokens: int,
    rounds: int,
    pinning: Pinning | None,
    one_at_a_time: bool,
    dashboard: str | None = None,
    baseline: Path | None = None,
    dashboard_baseline: bool = False,
) -> dict[str, Any]:
    """Both fronts resident at once and every path interleaved (default), or, with
    ``one_at_a_time`` (two copies of a big model do not fit), the supervisor's phase and then
    router mode's phase, each interleaved with its own backend. ``baseline``: a third front,
    ``homelab serve`` from that source tree (the code before a change), in the same rounds."""
    w = setup.workdir
    config, presets = w / "config.yaml", w / "presets.ini"
    _supervisor_config(setup, config)
    _presets(setup, presets)
    ports = {
        "supervisor": free_port_below_ephemeral(),
        FLOOR: free_port_below_ephemeral(),
        "router": free_port_below_ephemeral(),
        "baseline": free_port_below_ephemeral(),
    }
    page_fronts = ("supervisor", "baseline") if dashboard_baseline else ("supervisor",)
    urls = {m: f"http://127.0.0.1:{p}" for m, p in ports.items()}
    starts: dict[str, tuple[list[str], Path, Any, dict[str, str] | None]] = {
        "supervisor": (_serve_argv(config, ports["supervisor"]), w / "supervisor.log", _supervisor_front, None),
        "router": (_router_argv(setup, presets, ports["router"], 1), w / "router.log", _router_front, None),
    }
    if baseline is not None:
        _supervisor_config(setup, w / "baseline.yaml")
        starts["baseline"] = (
            _serve_argv(w / "baseline.yaml", ports["baseline"]),
            w / "baseline.log",
            _baseline_front,
            _baseline_env(baseline),
        )
    async with _session() as s:

        async def phase(names: list[str]) -> dict[str, Any]:
            """Start these fronts (all processes first), then measure them interleaved."""
            with contextlib.ExitStack() as stack:
                procs = [
                    stack.enter_context(_process(starts[name][0], starts[name][1], starts[name][3])) for name in names
                ]
                fronts = [
                    await starts[name][2](s, setup, proc, urls[name]) for name, proc in zip(names, procs, strict=True)
                ]
                if "supervisor" in names:
                    supervisor = fronts[names.index("supervisor")]
                    fronts.append(await _floor_front(s, stack, setup, supervisor, ports[FLOOR]))
                _apply_pinning(fronts, pinning)
                watched = [n for n in names if dashboard is not None and n in page_fronts]
                received = {name: [0] for name in watched}
                pages = [
                    asyncio.ensure_future(_follow_events(s, urls[name], cast(str, dashboard), received[name]))
                    for name in watched
                ]
                try:
                    result = await _measure(s, fronts, requests, levels, max_tokens, rounds)
                finally:
                    for page in pages:
                        page.cancel()
                    await asyncio.gather(*pages, return_exceptions=True)
                if watched:
                    result["dashboard_event_bytes"] = {name: received[name][0] for name in watched}
                return result

        if one_at_a_time:
            return _merge({name: await phase([name]) for name in starts})
        return await phase(list(starts))


def _merge(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"latency_ms": {}, "short_cpu_us": {}, "throughput": {}}
    for phase in phases.values():
        merged["latency_ms"].update(phase["latency_ms"])
        merged["short_cpu_us"].update(phase["short_cpu_us"])
        for clients, paths in phase["throughput"].items():
            merged["throughput"].setdefault(clients, {}).update(paths)
        if "dashboard_event_bytes" in phase:
            merged.setdefault("dashboard_event_bytes", {}).update(phase["dashboard_event_bytes"])
    return merged


async def _direct_cold(s: aiohttp.ClientSession, setup: Setup, index: int) -> tuple[float, float]:
    """(spawn -> healthy, spawn -> first token) of a fresh llama-server, measured directly."""
    port = free_port_below_ephemeral()
    argv = [
        str(setup.server),
        "-m",
        str(setup.models[index]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *setup.server_args,
    ]
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
    ports = {"supervisor": free_port_below_ephemeral(), "router": free_port_below_ephemeral()}
    urls = {m: f"http://127.0.0.1:{p}" for m, p in ports.items()}
    with (
        _process(_serve_argv(config, ports["supervisor"]), w / "serve.log") as sup,
        _process(_router_argv(setup, presets, ports["router"], 1), w / "router.log") as router,
    ):
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
    results: dict[str, Any] = {
        "direct_healthy_ms": 1000 * statistics.median(healthy),
        "direct_cold_first_token_ms": 1000 * statistics.median(cold),
    }
    for mode in swap:
        results[mode] = {
            "first_token_ms": 1000 * statistics.median(swap[mode]),
            "share_ms": 1000 * statistics.median(share[mode]),
        }
    return results


def _workdir(args: argparse.Namespace) -> contextlib.AbstractContextManager[str]:
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(args.keep)
    return tempfile.TemporaryDirectory(prefix="homelab-bench-")


def _pinning(args: argparse.Namespace) -> Pinning | None:
    if args.pin is None:
        return None
    text = args.pin
    if text == "auto":
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise HomelabError("--pin auto needs at least 2 CPUs; pass --pin BACKEND_CPUS:FRONT_CPUS or leave it out")
        half = max(1, len(cpus) // 2)
        text = ",".join(map(str, cpus[:half])) + ":" + ",".join(map(str, cpus[half:]))
    backend, sep, front = text.partition(":")
    try:
        pinning = Pinning(_cpu_list(backend), _cpu_list(front))
    except ValueError:
        pinning = None
    if not sep or pinning is None or not pinning.backend or not pinning.front:
        raise HomelabError(f"--pin {args.pin!r}: expected auto or BACKEND_CPUS:FRONT_CPUS, e.g. 0:1 or 0-5:6,7")
    return pinning


def cmd_bench_proxy(args: argparse.Namespace) -> int:
    if args.dashboard_baseline and (args.dashboard is None or not args.baseline):
        raise HomelabError(
            "--dashboard-baseline opens a page on the --baseline front: give --dashboard and --baseline too"
        )
    pinning = _pinning(args)
    with _workdir(args) as tmp:
        setup = _setup(args, Path(tmp), 1)
        levels = [int(c) for c in args.clients.split(",")]
        print(
            f"bench proxy: {setup.server} on {setup.models[0].name} ({' '.join(setup.server_args)}); "
            f"{args.rounds} interleaved rounds; "
            + ("one front resident at a time" if args.one_at_a_time else "both fronts resident")
        )
        print(
            f"  {pinning.describe() if pinning else 'unpinned (every process may use every CPU)'}; "
            f"load average {Path('/proc/loadavg').read_text().split(' ', 3)[:3]}"
        )
        if pinning:
            os.sched_setaffinity(0, pinning.front)
        r = asyncio.run(
            bench_proxy(
                setup,
                args.requests,
                levels,
                args.tokens,
                args.rounds,
                pinning,
                args.one_at_a_time,
                args.dashboard,
                Path(args.baseline).expanduser() if args.baseline else None,
                args.dashboard_baseline,
            )
        )
    _print_proxy(r, args, levels)
    return 0


def _print_proxy(r: dict[str, Any], args: argparse.Namespace, levels: list[int]) -> None:
    fronts = [f for f in ("supervisor", FLOOR, "baseline", "router") if f in r["short_cpu_us"]]
    lat = r["latency_ms"]
    print(
        f"\nshort non-streaming requests ({args.requests} per path, max_tokens 1), ms; "
        "added = through the front - its backend called directly:"
    )
    print(
        f"  {'front':<11} {'direct p50':>10} {'front p50':>10} {'added p50':>10} {'direct p99':>10} "
        f"{'front p99':>10} {'added p99':>10} {'front CPU/request':>18}"
    )
    for front in fronts:
        d, f = lat[front + " direct"], lat[front]
        print(
            f"  {front:<11} {d['p50']:10.2f} {f['p50']:10.2f} {f['p50'] - d['p50']:+10.2f} "
            f"{d['p99']:10.2f} {f['p99']:10.2f} {f['p99'] - d['p99']:+10.2f} "
            f"{r['short_cpu_us'][front]:15.0f} us"
        )
    print(
        f"\nstreaming, tokens/s (max_tokens {args.tokens}; median of {args.rounds} rounds, min-max); "
        "ratio = median of per-round front / its direct; CPU = ms of CPU time per 1000 tokens "
        "(front process; backend llama-server for scale):"
    )
    print(
        f"  {'clients':>7} {'front':<11} {'direct':>17} {'front':>17} {'ratio':>6} "
        f"{'front CPU':>9} {'backend CPU':>11} {'tok/stream':>10}"
    )
    for clients in levels:
        t = r["throughput"][clients]
        for front in fronts:
            d, f = t[front + " direct"], t[front]
            print(
                f"  {clients:>7} {front:<11} {d['median']:6.0f} ({d['min']:4.0f}-{d['max']:4.0f}) "
                f"{f['median']:6.0f} ({f['min']:4.0f}-{f['max']:4.0f}) {f['ratio']:6.3f} "
                f"{f['front_cpu_ms_per_1k']:9.1f} {f['backend_cpu_ms_per_1k']:11.0f} "
                f"{f['tokens_per_stream']:10.1f}"
            )
    print(
        "  (the direct paths streamed",
        ", ".join(
            f"{t[p]['tokens_per_stream']:.1f}"
            for clients in levels
            for t in [r["throughput"][clients]]
            for p in t
            if p.endswith("direct")
        ),
        "tokens per stream)",
    )
    if "dashboard_event_bytes" in r:
        sizes = ", ".join(f"{name} {size:,}" for name, size in r["dashboard_event_bytes"].items())
        print(f"  (an open dashboard followed /api/events?logs={args.dashboard} throughout: bytes of events {sizes})")


def cmd_bench_swap(args: argparse.Namespace) -> int:
    with _workdir(args) as tmp:
        setup = _setup(args, Path(tmp), 2)
        print(
            f"bench swap: {setup.server}, models {setup.models[0].name} and {setup.models[1].name}, "
            f"{args.rounds} rounds"
        )
        r = asyncio.run(bench_swap(setup, args.rounds))
    print(
        f"\nbackend alone (median): spawn -> healthy {r['direct_healthy_ms']:.1f} ms, "
        f"spawn -> first token {r['direct_cold_first_token_ms']:.1f} ms"
    )
    for mode in ("supervisor", "router"):
        v = r[mode]
        print(
            f"{mode:<10}: request -> first token on a swap {v['first_token_ms']:.1f} ms; "
            f"its share (median of per-round differences) {v['share_ms']:+.1f} ms"
        )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="llama-server binary")
    parser.add_argument(
        "--model",
        action="append",
        metavar="GGUF",
        help="a GGUF model (repeat); default: tiny models written on the fly",
    )
    parser.add_argument(
        "--server-args",
        default=DEFAULT_SERVER_ARGS,
        help=f"extra llama-server arguments for every path (default {DEFAULT_SERVER_ARGS!r})",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep configs and logs in DIR")
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="tiny",
        help="shape of the models written on the fly without --model (default tiny; "
        "small: ~20 MB f16, slower generation, closer to a real model's ratio)",
    )


def register(cli: CLI) -> None:
    proxy = cli.benchmark(
        "proxy", cmd_bench_proxy, "added latency and streaming throughput of the supervisor vs direct and router mode"
    )
    _common(proxy)
    proxy.add_argument("--requests", type=int, default=200, help="short requests per path (default 200)")
    proxy.add_argument("--clients", default="1,8,64", help="concurrent streaming clients (default 1,8,64)")
    proxy.add_argument("--tokens", type=int, default=64, help="tokens per streamed answer (default 64)")
    proxy.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved streaming rounds per client count; medians are reported (default 5)",
    )
    proxy.add_argument(
        "--pin",
        metavar="auto|BACKEND_CPUS:FRONT_CPUS",
        help="pin the llama-server backends to some CPUs and the fronts (supervisor, router) "
        "plus this load generator to the others, like a GPU box where generation does "
        "not take every core (auto: first half / second half); default: unpinned",
    )
    proxy.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="one resident model at a time (supervisor phase, then router phase) for models "
        "that do not fit twice; default: both fronts resident, all paths interleaved",
    )
    proxy.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run `homelab serve` from this homelab source tree (e.g. a `git worktree` of the "
        "commit before a change) as a third front, 'baseline', in the same interleaved rounds",
    )
    proxy.add_argument(
        "--dashboard",
        nargs="?",
        const="proxy",
        metavar="LOGS",
        help="keep the dashboard's event stream (/api/events) open and read during the "
        "measurement, as an open page would; LOGS: the logs its Logs panel follows "
        "(default proxy, the supervisor's, as the page opens; a model's id; all: every log)",
    )
    proxy.add_argument(
        "--dashboard-baseline",
        action="store_true",
        help="with --dashboard and --baseline, keep a page open on the baseline front too (the "
        "page's cost before and after a change, side by side)",
    )
