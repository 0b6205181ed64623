"""llama.cpp's own memory numbers, for checking our estimate against the real thing.

Two sources: ``llama-server`` started for a moment at log verbosity 4 (it prints every buffer it
allocates: model, KV, recurrent state, output, compute, per backend buffer type, to 0.01 MiB),
and ``llama-fit-params --fit-print on`` (llama.cpp's no-allocation dry run; whole MiB per
device). Used by ``homelab bench plan``, ``homelab plan --oracle`` and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..address import free_loopback_port, wait_until_accepting
from ..errors import HomelabError

MIB = 1024 * 1024

_BUFFER_LINE = re.compile(
    r"(?P<where>load_tensors|llama_context|llama_kv_cache|llama_memory_recurrent|sched_reserve|"
    r"[a-z_]+):\s+(?P<buft>\S+)\s+(?P<kind>model|output|KV|RS|compute) buffer size\s*=\s*"
    r"(?P<mib>[0-9.]+) MiB"
)
_CTX_LINE = re.compile(r"llama_context: (?P<key>n_ctx|n_seq_max|n_ubatch|n_ctx_seq)\s+=\s+(?P<value>\d+)")
_KV_CELLS = re.compile(r"llama_kv_cache: size =\s+[0-9.]+ MiB \(\s*(?P<cells>\d+) cells,\s+(?P<layers>\d+) layers")
_FA_LINE = re.compile(r"resolve_fused_ops: Flash Attention (?P<state>enabled|disabled)")


class OracleError(HomelabError):
    pass


@dataclass
class Observed:
    """Buffer sizes (bytes, from MiB with two decimals) keyed by llama.cpp's buffer-type name."""

    model: dict[str, int] = field(default_factory=dict)
    kv: dict[str, int] = field(default_factory=dict)
    recurrent: dict[str, int] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    n_seq_max: int | None = None
    n_ubatch: int | None = None
    kv_cells: list[int] = field(default_factory=list)
    flash_attn: bool | None = None
    log: str = ""

    @staticmethod
    def total(part: dict[str, int]) -> int:
        return sum(part.values())

    @property
    def all_total(self) -> int:
        return sum(self.total(p) for p in (self.model, self.kv, self.recurrent, self.output, self.compute))


def parse_server_log(text: str) -> Observed:
    """Collect the buffer sizes from a ``llama-server``/``llama-cli`` log (any verbosity >= info);
    of the last model load when there were several (``--fit``'s dry run comes first)."""
    obs = Observed(log=text)
    kinds = {"model": obs.model, "KV": obs.kv, "RS": obs.recurrent, "output": obs.output, "compute": obs.compute}
    for line in text.splitlines():
        if "load_tensors: loading model tensors" in line:
            # a new load: --fit's dry run (logged at -lv 5) loads once before the real one;
            # keep the last load's buffers
            for bucket in kinds.values():
                bucket.clear()
            obs.kv_cells.clear()
        elif m := _BUFFER_LINE.search(line):
            bucket = kinds[m["kind"]]
            bucket[m["buft"]] = bucket.get(m["buft"], 0) + round(float(m["mib"]) * MIB)
        elif m := _CTX_LINE.search(line):
            setattr(obs, m["key"], int(m["value"]))
        elif m := _KV_CELLS.search(line):
            obs.kv_cells.append(int(m["cells"]))
        elif m := _FA_LINE.search(line):
            obs.flash_attn = m["state"] == "enabled"
    return obs


def flag_args(flags: dict[str, object]) -> list[str]:
    """Recipe flags (long names without dashes) as llama-server arguments."""
    args: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        args.append(f"--{name}")
        if value is not True:
            args.append(str(value))
    return args


def stop_server(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def observe_server(server_bin: Path, model: Path, flags: dict[str, object], *, timeout: float = 60.0) -> Observed:
    """Start ``llama-server`` with ``flags`` until it has allocated everything, then stop it."""
    cmd = [
        str(server_bin),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "-lv",
        "4",
        "--fit",
        "off",
        "--no-warmup",
        "--log-colors",
        "off",
        *flag_args(flags),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while True:
            if time.monotonic() > deadline:
                raise OracleError(f"{server_bin} did not finish loading {model} within {timeout:.0f} s")
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)  # unbuffered: select() and the data we hold never disagree
            if not chunk:
                break
            data += chunk
            if b"load_model: initializing" in data or b"listening on" in data:
                break
    finally:
        stop_server(proc)
        sel.close()
        proc.stdout.close()
    lines = [data.decode("utf-8", "replace")]
    text = "".join(lines)
    obs = parse_server_log(text)
    if not obs.compute:
        tail = "\n".join(text.splitlines()[-8:])
        raise OracleError(f"{server_bin} did not report its buffers for {model}:\n{tail}")
    return obs


@dataclass(frozen=True)
class FitRow:
    """One device row of ``llama-fit-params --fit-print on`` (MiB, as llama.cpp rounds them)."""

    device: str
    model_mib: int
    context_mib: int
    compute_mib: int

    @property
    def total_mib(self) -> int:
        return self.model_mib + self.context_mib + self.compute_mib


@dataclass(frozen=True)
class FitReport:
    rows: tuple[FitRow, ...]
    rejected: str | None = None
    """The binary's complaint when it refused the flags (unknown or invalid argument)."""


def run_fit_params(fit_bin: Path, model: Path, flags: dict[str, object], *, timeout: float = 120.0) -> FitReport:
    """Run llama.cpp's own dry run with the model's flags; a rejected flag comes back as text."""
    cmd = [str(fit_bin), "-m", str(model), "--fit-print", "on", "--log-jsonl", *flag_args(flags)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OracleError(f"{fit_bin} took longer than {timeout:.0f} s on {model}") from None
    except OSError as exc:
        raise OracleError(f"cannot run {fit_bin}: {exc.strerror}. Pass --fit-params PATH.") from None
    rows: list[FitRow] = []
    # the JSON event goes to the log (stderr); stdout has the same rows as "name model ctx compute"
    for line in (proc.stderr + "\n" + proc.stdout).splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("type") == "fit_memory_breakdown":
            for row in event["data"]["rows"]:
                rows.append(FitRow(row["name"], row["model"], row["context"], row["compute"]))
    if not rows and proc.returncode == 0:
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
                rows.append(FitRow(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    if proc.returncode != 0 or not rows:
        out = (proc.stderr + proc.stdout).strip().splitlines()
        # "error: invalid argument: --x" / "error while handling argument ...": the first error line;
        # the usage text printed after it is noise
        errors = [ln for ln in out if _plain(ln).lower().startswith("error")] or [
            ln for ln in out if "error" in ln.lower()
        ]
        reason = _plain(errors[0] if errors else (out[-1] if out else f"exit status {proc.returncode}"))
        return FitReport(rows=tuple(rows), rejected=reason)
    return FitReport(rows=tuple(rows))


def _plain(line: str) -> str:
    if line.startswith("{"):
        try:
            return str(json.loads(line).get("msg", line)).strip()
        except json.JSONDecodeError:
            pass
    return line.strip()


_LONG_FLAG = re.compile(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)")


def help_flags(binary: Path, *, timeout: float = 30.0) -> frozenset[str]:
    """The long flag names (without dashes) a llama.cpp binary lists in ``--help``."""
    try:
        proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OracleError(f"cannot run {binary} --help: {exc}") from None
    return frozenset(_LONG_FLAG.findall(proc.stdout + proc.stderr))


# --------------------------------------------------------------------------- RPC workers

RPC_SERVER_NAMES = ("rpc-server", "ggml-rpc-server")
"""homelab installs the binary as ``rpc-server``; b11434's CMake target is ``ggml-rpc-server``."""


def rpc_server_beside(server_bin: Path) -> Path | None:
    """The ``rpc-server`` built next to ``llama-server``, if there is one."""
    for name in RPC_SERVER_NAMES:
        candidate = server_bin.with_name(name)
        if candidate.is_file():
            return candidate
    return None


@contextmanager
def local_rpc_servers(binary: Path, count: int, *, timeout: float = 30.0) -> Iterator[list[str]]:
    """``count`` real ``rpc-server`` processes on 127.0.0.1 (their CPU device, one thread each);
    yields their endpoints (``127.0.0.1:PORT``) and stops them, whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        endpoints = []
        for _ in range(count):
            port = free_loopback_port()
            proc = subprocess.Popen(
                [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(proc)
            endpoint = f"127.0.0.1:{port}"

            def alive(proc: subprocess.Popen[bytes] = proc) -> bool:
                return proc.poll() is None

            error = wait_until_accepting(endpoint, timeout, alive, str(binary))
            if error:
                raise OracleError(error)
            endpoints.append(endpoint)
        yield endpoints
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
