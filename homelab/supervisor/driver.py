"""The supervisor's driver: carries out the scheduler's decisions.

The scheduler (:mod:`.scheduler`) is a pure state machine; :class:`Supervisor` turns its actions
into backend processes, answers to waiting requests and timers, and reports back what happened
(ready, failed, exited, stopped). The HTTP side (:mod:`.api`, :mod:`.inference`) finds it in the
application under :data:`SUPERVISOR_KEY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import HomelabError
from . import notify
from .activity import Activity
from .config import Config, PeerConfig
from .config_load import models_to_restart
from .connect import backend_connector
from .deferred import DeferredWork
from .hostmetrics import HostMetrics
from .logs import BufferHandler, LogBuffer
from .metrics import Metrics
from .peers import PeerMonitor, ProbeTimings
from .prefetch import Prefetcher, read_mem_available, swap_plan
from .process import Backend, StartFailed, Watchdog
from .promptcache import PromptCache, cache_dir
from .scheduler import Admit, Reject, Scheduler, Start, State, Stop

log = logging.getLogger("homelab.supervisor")

Loader = Callable[[Path], Config]


class Supervisor:
    """Carries out the scheduler's decisions: backends, answers to waiting requests, timers."""

    def __init__(
        self,
        config: Config,
        loader: Loader | None = None,
        drain_timeout: float = 30.0,
        peer_timings: ProbeTimings | None = None,
    ) -> None:
        self.config = config
        self.loader = loader
        self.drain_timeout = drain_timeout
        self.scheduler = Scheduler(config)
        self.backends: dict[str, Backend] = {}
        self.all_log = LogBuffer("all", max_bytes=1 << 20)
        self.supervisor_log = LogBuffer("supervisor", parent=self.all_log)
        self.upstream_log = LogBuffer("upstream", max_bytes=1 << 20)
        """Every backend's output, unprefixed (``/logs/stream/upstream``)."""
        self.logs: dict[str, LogBuffer] = {}
        self.metrics = Metrics()
        self.host_metrics = HostMetrics()
        self.started = int(time.time())
        self.accepting = True
        self.active = 0
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Admit | Reject]] = {}
        self.admitted_to: dict[int, Backend] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._stopped_events: dict[str, asyncio.Event] = {}
        self.session: aiohttp.ClientSession | None = None
        self.watchdog: Watchdog | None = None
        self.peers = PeerMonitor(config.peers, peer_timings)
        self._log_handler = BufferHandler(self.supervisor_log)
        # Swap costs (promptcache / prefetch): slots kept across evictions, the incoming model's
        # files read ahead while the outgoing one drains.
        self.prompt_cache = PromptCache.for_config(config, self.metrics)
        self._retired_caches: list[PromptCache] = []
        """Caches of an earlier ``x-promptCache.dir``: backends started with them save there."""
        self.prefetcher = Prefetcher(on_done=self._prefetched)
        self.activity = Activity(lambda: self.scheduler, self.now)  # the dashboard's records and live feed
        self.deferred = DeferredWork()
        """Each request's metrics and activity record, run while the thread would wait."""

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        log.addHandler(self._log_handler)
        self.session = aiohttp.ClientSession(
            # llama-server drops idle keep-alive connections after 5 s: let the pool drop them first.
            # DirectConnector: a connection per stream (llama-server closes it), opened cheaply.
            connector=backend_connector(limit=0, ttl_dns_cache=300, keepalive_timeout=3),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        self.watchdog = Watchdog()
        self.apply_log_settings()
        await self.peers.start()
        for model in self.config.hooks.preload:
            self.preload(model)

    def preload(self, model: str) -> None:
        model_id = self.config.resolve(model)
        if model_id is None:
            log.warning("hooks.on_startup.preload names unknown model %r", model)
            return

        async def run() -> None:
            req, fut = self.enqueue(model_id)
            result = await fut
            self.release(req)
            if isinstance(result, Reject):
                log.warning("preload of %s failed: %s", model_id, result.message)

        self._spawn(run())

    async def close(self) -> None:
        """Drain in-flight requests (bounded), then stop every backend."""
        self.accepting = False
        deadline = time.monotonic() + self.drain_timeout
        while self.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.deferred.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        backends = list(self.backends.values())
        await asyncio.gather(*(self._save_prompt_cache(b) for b in backends), return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
        for backend in backends:
            backend.kill()
        self.backends.clear()
        if self._timer:
            self._timer.cancel()
        if self.session:
            await self.session.close()
        await self.peers.close()
        if self.watchdog:
            self.watchdog.close()
        self.prefetcher.close()
        log.removeHandler(self._log_handler)
        log.propagate = True
        self.activity.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------ scheduling
    def dispatch(self, actions: list[Any], touched: tuple[str, ...] | None = None) -> None:
        """Carry out the scheduler's actions. ``touched``: the models the event itself changed
        (besides those the actions name), so the dashboard compares only those; None: any."""
        for action in actions:
            if isinstance(action, (Admit, Reject)):
                if isinstance(action, Admit):
                    # Bind the request to the process that is ready now: if it dies before the
                    # request is sent, its port may already belong to a replacement that loads.
                    backend = self.backends.get(action.model)
                    if backend is not None:
                        self.admitted_to[action.req] = backend
                fut = self._waiters.pop(action.req, None)
                if fut is not None and not fut.done():
                    fut.set_result(action)
            elif isinstance(action, Start):
                self._spawn(self._start(action))
            elif isinstance(action, Stop):
                log.info("stopping model %s: %s", action.model, action.reason)
                self._spawn(self._stop(action.model))
        if self._stopped_events:  # unload() callers wait for these (a failed start counts)
            for model_id in [m for m in self._stopped_events if self.status_of(m) is State.STOPPED]:
                self._stopped_events.pop(model_id).set()
        self._arm_timer()
        self.activity.dispatched(actions, touched)

    def _arm_timer(self) -> None:
        """The scheduler's next wake-up, from its O(1) floor. A timer that is due no later is
        kept: one that fires early ticks, finds nothing and re-arms at the exact deadline, so a
        request (which only makes a model busy, or restarts its TTL later) moves no timer."""
        wake = self.scheduler.wake_at
        timer = self._timer
        if wake is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        when = wake + 0.001
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.dispatch(self.scheduler.tick(self.now()), ())

    def enqueue(self, model_id: str) -> tuple[int, asyncio.Future[Admit | Reject]]:
        req = next(self._ids)
        fut: asyncio.Future[Admit | Reject] = self.loop.create_future()
        self._waiters[req] = fut
        state = self.scheduler.models.get(model_id)
        cold = state is None or state.state is State.STOPPED
        self.dispatch(self.scheduler.request(req, model_id, self.now()), (model_id,))
        if cold:
            self._prefetch(model_id)
        return req, fut

    def release(self, req: int) -> None:
        self._waiters.pop(req, None)
        self.admitted_to.pop(req, None)
        model_id = self.scheduler.requests.get(req)
        self.dispatch(self.scheduler.done(req, self.now()), () if model_id is None else (model_id,))

    def model_log(self, model_id: str) -> LogBuffer:
        buffer = self.logs.get(model_id)
        if buffer is None:
            buffer = self.logs[model_id] = LogBuffer(
                model_id, parent=self.all_log, prefix=model_id, tee=self.upstream_log
            )
        # logToStdout: upstream | both copy backends' output to our stdout (read at each start)
        buffer.mirror = _write_stdout if self.config.log_to_stdout in ("upstream", "both") else None
        return buffer

    def apply_log_settings(self) -> None:
        """logLevel; logToStdout proxy|both: our own log on stderr; upstream|none: only in /logs."""
        level = {"warn": "WARNING"}.get(self.config.log_level.lower(), self.config.log_level.upper())
        log.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
        log.propagate = self.config.log_to_stdout in ("proxy", "both")

    async def _start(self, action: Start) -> None:
        model_id = action.model
        cfg = self.config.models[model_id]
        if self.prompt_cache is not None:
            cfg = self.prompt_cache.launch_config(cfg)
        assert self.session is not None
        backend = Backend(cfg, self.model_log(model_id), self.session, self.watchdog, self._on_exit)
        self.backends[model_id] = backend
        log.info("starting model %s", model_id)
        try:
            await backend.spawn()
            time_to_ready = await backend.wait_ready(self.config.health_check_timeout)
        except StartFailed as exc:
            backend.kill()
            if self.backends.get(model_id) is backend:
                del self.backends[model_id]
            log.error("%s", exc)
            self.metrics.swaps.inc(model=model_id, outcome="failed")
            self.dispatch(self.scheduler.start_failed(model_id, str(exc), self.now()), (model_id,))
            return
        except asyncio.CancelledError:
            backend.kill()
            raise
        if self.prompt_cache is not None and self.prompt_cache.active_for(backend.model):
            # before any request is admitted
            await self.prompt_cache.restore(backend.model, self.session, backend.auth_headers or None)
        now = self.now()
        self.metrics.swaps.inc(model=model_id, outcome="ready")
        self.metrics.time_to_ready.observe(time_to_ready, model=model_id)
        self.metrics.swap_duration.observe(max(0.0, now - action.requested_at), model=model_id)
        log.info("model %s ready in %.3fs", model_id, time_to_ready)
        self.dispatch(self.scheduler.ready(model_id, now), (model_id,))
        for warm_id in self.config.prefetch.keep_warm:
            if self.status_of(warm_id) is State.STOPPED:
                self._prefetch(warm_id)

    def _on_exit(self, backend: Backend) -> None:
        model_id = backend.model.id
        if backend.stop_requested or self.backends.get(model_id) is not backend:
            return
        state = self.scheduler.models.get(model_id)
        if state is None or state.state is not State.READY:
            return  # a start in progress reports the exit itself
        del self.backends[model_id]
        reason = f"model {model_id!r} {backend.exit_description()}; last output:\n{backend.log.tail(8)}"
        log.error("%s crashed: %s", model_id, backend.exit_description())
        self.metrics.crashes.inc(model=model_id)
        self.dispatch(self.scheduler.exited(model_id, reason, self.now()), (model_id,))

    async def _stop(self, model_id: str) -> None:
        backend = self.backends.get(model_id)
        if backend is not None:
            await self._save_prompt_cache(backend)
            await backend.stop()
            if self.backends.get(model_id) is backend:
                del self.backends[model_id]
            cache = self._cache_of(backend)
            if cache is not None:
                cache.sweep(model_id)
            running = [b.model for b in self.backends.values()]
            self._retired_caches = [c for c in self._retired_caches if any(c.active_for(m) for m in running)]
        self.dispatch(self.scheduler.stopped(model_id, self.now()), (model_id,))

    def _cache_of(self, backend: Backend) -> PromptCache | None:
        """The prompt cache whose folder the backend was started with, if any."""
        return next((c for c in (self.prompt_cache, *self._retired_caches) if c and c.active_for(backend.model)), None)

    async def _save_prompt_cache(self, backend: Backend) -> None:
        """Before a stop: keep the backend's slots (bounded by x-promptCache.saveTimeout)."""
        cache = self._cache_of(backend)
        if cache is not None and self.session is not None and backend.alive():
            await cache.save(backend.model, self.session, backend.auth_headers or None)

    def _reconfigure_prompt_cache(self, new: Config) -> None:
        """``x-promptCache`` from a reload. Another ``dir``: models started from now on use the new
        folder; running ones still save into the folder they were started with when they stop."""
        cache = self.prompt_cache
        if cache is not None and cache.root == cache_dir(new):
            cache.reconfigure(new.prompt_cache)
            return
        if cache is not None and any(cache.active_for(b.model) for b in self.backends.values()):
            self._retired_caches.append(cache)
        self.prompt_cache = PromptCache.for_config(new, self.metrics)

    def _prefetch(self, model_id: str) -> None:
        """A swap to ``model_id`` was decided: read its files ahead (x-prefetch)."""
        if not self.config.prefetch.enabled:
            return
        resident = sorted(
            (s for s in self.scheduler.models.values() if s.state is not State.STOPPED and s.id != model_id),
            key=lambda s: s.last_used,
        )
        files, budget = swap_plan(
            self.config, model_id, [s.id for s in resident], {s.id for s in resident if s.busy}, read_mem_available()
        )
        self.prefetcher.warm(model_id, files, budget)

    def _prefetched(self, model_id: str, read: int) -> None:
        """From the prefetch thread (the loop may have closed meanwhile)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(lambda: self.metrics.prefetch_bytes.inc(read, model=model_id))

    async def unload(self, models: list[str] | None, wait: float = 30.0) -> list[str]:
        """Unload models (all when None) and wait (bounded) until they have stopped. Requests
        still in flight after ``x-unloadGrace`` are cut: the model is stopped anyway."""
        targets = [
            m
            for m, s in self.scheduler.models.items()
            if s.state is not State.STOPPED and (models is None or m in models)
        ]
        events = [self._stopped_events.setdefault(m, asyncio.Event()) for m in targets]
        self.dispatch(self.scheduler.unload(targets, self.now()))
        if not events:
            return targets
        if not await _all_set(events, self.config.unload_grace):
            busy = [m for m in targets if self.status_of(m) is State.READY]
            if busy:
                log.warning(
                    "unload: %s still serving after %gs (x-unloadGrace); stopping anyway",
                    ", ".join(busy),
                    self.config.unload_grace,
                )
                self.dispatch(self.scheduler.force_stop(busy, self.now()))
            await _all_set(events, wait)
        return targets

    async def reload(self) -> tuple[bool, str, list[str]]:
        """Re-read the config; restart only changed models. A bad config keeps the old one.
        Returns: accepted, the error if not, the models restarting (or stopping: removed)."""
        if self.loader is None or self.config.source is None:
            return False, "no config file to reload from", []
        notify.reloading()
        try:
            new = self.loader(self.config.source)
        except (HomelabError, OSError, ValueError) as exc:
            log.error("reload rejected, still serving the previous config: %s", exc)
            notify.notify("READY=1", "STATUS=reload rejected")
            return False, str(exc), []
        restarting = sorted(models_to_restart(self.config, new))
        self.config = new
        self.apply_log_settings()
        self._reconfigure_prompt_cache(new)
        self.peers.reconfigure(new.peers)
        self.dispatch(self.scheduler.reconfigure(new, restarting, self.now()))
        for note in new.warnings:  # what `serve` prints at start, so a reload does not hide it
            log.warning("reload: %s", note)
        log.info("reloaded %s; restarting changed models: %s", new.source, ", ".join(restarting) or "none")
        self.activity.refresh()  # open dashboards see added and removed models now
        notify.notify("READY=1", "STATUS=reloaded")
        return True, "", restarting

    # ------------------------------------------------------------ queries
    def status_of(self, model_id: str) -> State:
        state = self.scheduler.models.get(model_id)
        return state.state if state else State.STOPPED

    def find_peer(self, requested: str) -> tuple[PeerConfig, str] | None:
        """``<peer>/<model>``, or a bare model name that exactly one peer lists (llama-swap's
        rule; local models and aliases are resolved before this). Only listed models route."""
        prefix, _, rest = requested.partition("/")
        peer = self.config.peers.get(prefix) if rest else None
        if peer is not None and rest in peer.models:
            return peer, rest
        serving = self.peers_serving(requested)
        return (serving[0], requested) if len(serving) == 1 else None

    def peers_serving(self, model: str) -> tuple[PeerConfig, ...]:
        return self.peers.serving(model)


async def _all_set(events: list[asyncio.Event], timeout: float) -> bool:
    """Wait until every event is set, at most ``timeout`` seconds; whether they all were."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    _, pending = await asyncio.wait(waits, timeout=timeout)
    for task in pending:
        task.cancel()
    return not pending


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


SUPERVISOR_KEY = web.AppKey("supervisor", Supervisor)
"""Where request handlers find the driver in the aiohttp application."""
