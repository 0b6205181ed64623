"""One backend process (a ``llama-server``): spawn, readiness, stop, and the no-orphan guarantee.

No orphans, ever, even when the supervisor is SIGKILLed:

* each backend runs in its own session/process group (``start_new_session``), so a stop or a
  crash cleanup signals the whole group, grandchildren included;
* each backend gets ``PR_SET_PDEATHSIG = SIGKILL`` in the child before ``exec``: the kernel kills
  it when the supervisor dies. PDEATHSIG fires on the death of the *thread* that forked, so
  backends are spawned from the event-loop thread, which lives as long as the supervisor;
* PDEATHSIG does not reach a backend's own children, so a tiny :class:`Watchdog` process (started
  once, in its own session) holds the list of backend process groups on a pipe from the
  supervisor; when the pipe reaches EOF (the supervisor died, however it died) it SIGKILLs every
  group it still knows;
* when a backend's main process exits (stopped or crashed) its group is SIGKILLed before the
  main process is reaped, so the group ID cannot have been reused yet.

Only the supervisor can use a backend: a ``llama-server`` backend gets a random key of its own
at every start, in its environment (``LLAMA_API_KEY``: never on the command line, which every
local user can read in ``/proc/<pid>/cmdline``; ``/proc/<pid>/environ`` is readable only by the
same user). The supervisor adds the key to every request it sends there, so another local user,
or a web page that finds the port, gets 401. Other commands (a wrapper script, vLLM, a test
double) are not ours to extend: they get no key, and their ports are as open as they make them.

Readiness is detected within tens of milliseconds: ``checkEndpoint`` is polled every 10 ms growing
to 100 ms, and the wait wakes at once when the process exits or prints a "ready" log line.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import cast

import aiohttp

from .config import ModelConfig
from .logs import LogBuffer
from .relay import ConnectionPool

log = logging.getLogger("homelab.supervisor")

PR_SET_PDEATHSIG = 1
READY_HINTS = (b"listening on", b"server is listening", b"all slots are idle", b"model loaded")

BACKEND_KEY_ENV = "LLAMA_API_KEY"
"""llama-server reads API keys from this variable (besides ``--api-key``/``--api-key-file``)."""

_libc = ctypes.CDLL(None, use_errno=True)


def backend_key_of(pid: int) -> str | None:
    """The key a running backend was given, read from its environment: only its own user (the
    supervisor's) can (a benchmark calling the backend directly needs it)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = BACKEND_KEY_ENV.encode() + b"="
    found = [entry[len(prefix) :] for entry in environ if entry.startswith(prefix)]
    return found[-1].decode() if found else None


def is_llama_server(cmd: Sequence[str]) -> bool:
    """The command runs llama-server itself (a wrapper script would not pass our key on)."""
    return bool(cmd) and PurePath(cmd[0]).name == "llama-server"


def _child_setup(parent_pid: int) -> None:
    """Runs in the forked child before exec: die with the supervisor."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


def spawn_guarded(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Popen in a new session with PDEATHSIG=SIGKILL (call from a long-lived thread)."""
    return subprocess.Popen(  # type: ignore[call-overload]  # **kwargs: object matches no Popen overload
        argv,
        start_new_session=True,
        preexec_fn=functools.partial(_child_setup, os.getpid()),
        **kwargs,
    )


WATCHDOG_SCRIPT = r"""
import os, signal, sys
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[:1] == "+":
        groups.add(int(line[1:]))
    elif line[:1] == "-":
        groups.discard(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """Kills every registered process group when the supervisor goes away (pipe EOF)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", WATCHDOG_SCRIPT],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._proc.stdin is not None
        self._pipe = self._proc.stdin

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _send(self, line: str) -> None:
        try:
            self._pipe.write(line.encode())
            self._pipe.flush()
        except (BrokenPipeError, ValueError):
            log.warning("backend watchdog is gone; backends' children may outlive a crash")

    def register(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def unregister(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        try:
            self._pipe.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self._proc.kill()


class StartFailed(Exception):
    """The backend exited while loading or did not become ready in time."""


OUTPUT_BATCH = 0.25
"""Seconds a ready backend's output waits in its pipe, so its lines are read in batches: as often
as open pages get the activity (:data:`.activity.ACTIVITY_EVERY`). At 0.05 s the batches' wake-ups
cost the supervisor ~0.2 ms of CPU per 256-token stream (~0.8 ms per 1000 tokens, one client),
against ~0.04 ms now (docs/benchmarks.md, "The relay floor")."""


class _OutputProtocol(asyncio.Protocol):
    """The backend's stdout and stderr. Until it is ready every line is read at once (the
    readiness hints); after that, reading pauses for :data:`OUTPUT_BATCH` after each read:
    llama-server writes ~10 lines per request, one write each, and a wake-up and ``read`` per line
    cost ~10% of the supervisor's CPU per short request (measured with the backend's logging off).
    Its log thread, not inference, waits if the 64 KiB pipe fills meanwhile."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.ReadTransport | None = None
        self._resume: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.ReadTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.backend._on_output(data)
        if self.backend.ready and self._resume is None and self.transport is not None:
            self.transport.pause_reading()
            self._resume = self.backend._loop.call_later(OUTPUT_BATCH, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.backend._output_closed.set()


class Backend:
    """A running backend. Create with :meth:`spawn` from the event-loop thread."""

    def __init__(
        self,
        model: ModelConfig,
        log_buffer: LogBuffer,
        session: aiohttp.ClientSession,
        watchdog: Watchdog | None = None,
        on_exit: Callable[[Backend], None] | None = None,
    ) -> None:
        self.model = model
        self.log = log_buffer
        self.session = session
        self.watchdog = watchdog
        self.on_exit = on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stop_requested = False
        self.started_at = 0.0
        self.exited = asyncio.Event()
        self._wake = asyncio.Event()
        self.ready = False
        self._output_closed = asyncio.Event()
        self._pidfd: int | None = None
        self._loop = asyncio.get_running_loop()
        self.secret: str | None = secrets.token_urlsafe(32) if is_llama_server(model.cmd) else None
        """The key only this supervisor knows (a new one per start); None: not a llama-server."""
        self.connections = ConnectionPool()
        """Kept-alive connections for short answers (:mod:`.relay`); closed when the process stops."""
        self.base_url = model.proxy.rstrip("/")
        """Where requests go: the model's ``proxy`` without a trailing slash."""

    @property
    def auth_headers(self) -> dict[str, str]:
        """What every request the supervisor sends to this backend carries."""
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(self) -> None:
        env = {**os.environ, **self.model.env}
        if self.secret is not None:
            env[BACKEND_KEY_ENV] = self.secret
        self.log.append(f"[homelab] starting {self.model.id}: {' '.join(self.model.cmd)}\n".encode())
        self.started_at = time.monotonic()
        try:
            self.proc = spawn_guarded(
                list(self.model.cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
            )
        except OSError as exc:
            raise StartFailed(f"cannot run {self.model.cmd[0]!r}: {exc.strerror or exc}") from exc
        if self.watchdog:
            self.watchdog.register(self.proc.pid)
        assert self.proc.stdout is not None
        await self._loop.connect_read_pipe(lambda: _OutputProtocol(self), self.proc.stdout)
        self._pidfd = os.pidfd_open(self.proc.pid)
        self._loop.add_reader(self._pidfd, self._on_process_exit)

    def _on_output(self, data: bytes) -> None:
        self.log.append(data)
        if not self.ready and not self.exited.is_set() and any(hint in data for hint in READY_HINTS):
            self._wake.set()

    def _on_process_exit(self) -> None:
        assert self.proc is not None and self._pidfd is not None
        self.connections.close()
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        # The leader is a zombie until reaped, so its group ID is still ours: kill the rest of
        # the group (children the backend forked) before reaping.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.returncode = self.proc.wait()
        if self.watchdog:
            self.watchdog.unregister(self.proc.pid)
        self._read_pipe_now()  # its last lines, while reading may be paused (OUTPUT_BATCH)
        how = f"signal {-self.returncode}" if self.returncode < 0 else f"status {self.returncode}"
        self.log.append(f"[homelab] {self.model.id} exited with {how}\n".encode())
        self.exited.set()
        self._wake.set()
        if self.on_exit:
            self.on_exit(self)

    def _read_pipe_now(self) -> None:
        """What the output pipe holds, read at once: the exit handler's report quotes the last
        lines. The pipe is non-blocking (the event loop set it so)."""
        if self.proc is None or self.proc.stdout is None or self.proc.stdout.closed:
            return
        fd = self.proc.stdout.fileno()
        for _ in range(64):  # at most the pipe's 64 KiB and a little more
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # BlockingIOError: empty for now, or already closed
                return
            if not data:
                return
            self._on_output(data)

    def alive(self) -> bool:
        """The main process runs (not exited, not a zombie waiting for the exit handler)."""
        if self.proc is None or self.exited.is_set():
            return False
        try:  # one syscall; WNOWAIT leaves the reaping to the exit handler
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def exit_description(self) -> str:
        rc = self.returncode
        if rc is None:
            return "running"
        return f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"

    async def _probe(self, url: str) -> bool:
        try:
            async with self.session.get(url, headers=self.auth_headers, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def wait_ready(self, timeout: float) -> float:
        """Return seconds from spawn to ready; raise :class:`StartFailed` otherwise."""
        deadline = self._loop.time() + timeout
        url = self.base_url + (self.model.check_endpoint or "")
        delay = 0.01
        while True:
            if self.exited.is_set():
                await self._drain_output()
                raise StartFailed(
                    f"model {self.model.id!r} {self.exit_description()} while loading; "
                    f"last output:\n{self.log.tail(12)}"
                )
            if self.model.check_endpoint is None or await self._probe(url):
                if not self.exited.is_set():
                    self.ready = True  # no more scanning its output for the hints
                    return time.monotonic() - self.started_at
                continue
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise StartFailed(
                    f"model {self.model.id!r} not ready after {timeout:g}s (healthCheckTimeout) at "
                    f"{url}; last output:\n{self.log.tail(12)}"
                )
            self._wake.clear()
            try:
                async with asyncio.timeout(min(delay, remaining)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            delay = min(delay * 1.5, 0.1)

    async def _drain_output(self) -> None:
        try:
            async with asyncio.timeout(0.5):
                await self._output_closed.wait()
        except TimeoutError:
            pass

    async def stop(self) -> None:
        """cmdStop or SIGTERM to the group; SIGKILL after ``unloadTimeout``. Idempotent."""
        self.stop_requested = True
        self.connections.close()  # an idle keep-alive connection must not hold the stop up
        if self.proc is None or self.exited.is_set():
            return
        pid = self.proc.pid
        if self.model.cmd_stop:
            argv = [part.replace("${PID}", str(pid)) for part in self.model.cmd_stop]
            try:
                stopper = spawn_guarded(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                self._loop.run_in_executor(None, stopper.wait)
            except OSError as exc:
                log.warning("cmdStop of %s failed (%s); sending SIGTERM", self.model.id, exc)
                self._signal_group(signal.SIGTERM)
        else:
            self._signal_group(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.model.unload_timeout):
                await self.exited.wait()
        except TimeoutError:
            log.warning("%s did not stop within %gs; killing it", self.model.id, self.model.unload_timeout)
            self._signal_group(signal.SIGKILL)
            await self.exited.wait()

    def kill(self) -> None:
        """SIGKILL the whole group now (shutdown of last resort, failed starts)."""
        self.stop_requested = True
        self.connections.close()
        if self.proc is not None and not self.exited.is_set():
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except OSError:
            pass
