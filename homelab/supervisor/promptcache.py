"""A prompt cache that survives eviction: save a backend's slots before it stops, restore them
when it starts again, so a returning agent's long shared prefix skips its prefill.

llama-server saves a slot's KV cells and tokens with ``POST /slots/<id>?action=save`` into the
directory given by ``--slot-save-path`` and loads them back with ``action=restore``. A saved
state only means something to the same model file, the same build and the same KV-shaping flags:
restored anywhere else it is at best refused by llama-server and at worst silently wrong. So every
file is recorded under a *cache key* made of the backend's whole command line (file arguments,
the binary included, stand for their identity: path, size, mtime, inode), minus the flags that
cannot change what a KV cell means (ports, threads, logging...). A key that no longer matches
(model file replaced, build rebuilt, ctx-size or cache types changed) refuses the restore and
drops the files; requests are then served normally, with a full prefill.

Disk use is bounded per model and in total, least recently used dropped first. Files live in a
0700 directory, each 0600 (a slot holds the user's prompts). Saving is bounded by a timeout: a
slow disk delays an eviction by at most that long, and a save cut short leaves only a temporary
file, swept when the backend has stopped.

This module has the pure core (key, index, LRU plan) and the thin edge (:class:`PromptCache`,
which speaks the slot API); the supervisor calls :meth:`PromptCache.save` before it stops a
backend and :meth:`PromptCache.restore` after it is ready and before requests are admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import aiohttp

from ..files import atomic_write_text
from .config import Config, ModelConfig, PromptCacheSettings
from .metrics import Counter, Metrics

log = logging.getLogger("homelab.supervisor")

INDEX_NAME = "index.json"
TEMP_PREFIX = "tmp-"
SLOT_SAVE_PATH = "--slot-save-path"

IGNORED_FLAGS = frozenset({
    "--host", "--port", "-t", "--threads", "-tb", "--threads-batch", "--threads-http", "-a", "--alias",
    "--api-key", "--api-key-file", "--metrics", "--slots", "--no-slots", "--props", "--webui", "--no-webui",
    "--log-disable", "--log-file", "--log-colors", "--log-prefix", "--log-timestamps", "-v", "--verbose",
    "-lv", "--verbosity", "--log-verbosity", "-to", "--timeout", SLOT_SAVE_PATH, "-sps",
    "--slot-prompt-similarity", "--sleep-idle-seconds", "--no-warmup", "--media-path",
})  # fmt: skip
"""Flags (and their values) that cannot change what a saved KV cell means. Anything not listed
is part of the key: an unknown flag only ever costs a refused restore, never a wrong one."""

CTX_FLAGS = ("-c", "--ctx-size")
SLOTS_OFF = ("--no-slots",)
KV_UNIFIED_FLAGS = {"-kvu": True, "--kv-unified": True, "-no-kvu": False, "--no-kv-unified": False}
PARALLEL_FLAGS = ("-np", "--parallel")
IDLE_SLOTS_ENV = "LLAMA_ARG_CACHE_IDLE_SLOTS"
"""llama-server's variable for ``--cache-idle-slots`` (b11434; ``LLAMA_ARG_NO_...`` turns it off too)."""
TRUTHY = ("1", "true", "on", "enabled")


# --------------------------------------------------------------------------- pure core


def flag_value(cmd: Sequence[str], names: Iterable[str]) -> str | None:
    """The value of the last ``--name value`` or ``--name=value`` in ``cmd``."""
    names = tuple(names)
    found = None
    for i, word in enumerate(cmd):
        if word in names and i + 1 < len(cmd):
            found = cmd[i + 1]
        elif "=" in word and word.split("=", 1)[0] in names:
            found = word.split("=", 1)[1]
    return found


def ctx_size(cmd: Sequence[str]) -> int | None:
    value = flag_value(cmd, CTX_FLAGS)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def enabled_for(model: ModelConfig, settings: PromptCacheSettings) -> bool:
    """Explicit ``x-promptCache`` wins. Otherwise on for long contexts (``minCtx``): saving and
    reading a slot costs I/O in proportion to its tokens, which pays back only when the prefill it
    replaces is long (tens of seconds for a 30k-token agent context on a consumer GPU, a fraction
    of a second for a 2k-token chat). Never for a command without a model (router mode) or with
    the slots endpoint off, and never when the user manages ``--slot-save-path`` themselves."""
    cmd = model.cmd
    if flag_value(cmd, ("-m", "--model")) is None or any(w in SLOTS_OFF for w in cmd):
        return False
    if any(w == SLOT_SAVE_PATH or w.startswith(SLOT_SAVE_PATH + "=") for w in cmd):
        return False
    if model.prompt_cache is not None:
        return model.prompt_cache
    ctx = ctx_size(cmd)
    return ctx is not None and ctx >= settings.min_ctx


def kv_unified(cmd: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether llama-server runs one KV buffer shared by all slots: ``-kvu``, or, by default,
    when the number of slots is automatic (no ``-np``, or ``-np -1``; b11434 ``--help``). The
    command line wins over ``LLAMA_ARG_*`` variables, as in llama-server."""
    chosen = None
    for word in cmd:
        chosen = KV_UNIFIED_FLAGS.get(word, chosen)
    if chosen is not None:
        return chosen
    if "LLAMA_ARG_NO_KV_UNIFIED" in env:
        return False
    if "LLAMA_ARG_KV_UNIFIED" in env:
        return env["LLAMA_ARG_KV_UNIFIED"].strip().lower() in TRUTHY
    slots = flag_value(cmd, PARALLEL_FLAGS) or env.get("LLAMA_ARG_N_PARALLEL")
    return slots is None or slots.strip() in ("-1", "auto")


def keep_idle_slots(model: ModelConfig) -> dict[str, str]:
    """The backend's environment, with idle slots kept in a unified KV cache.

    With a unified KV buffer, llama-server (``--cache-idle-slots``, on by default) copies every
    idle slot into its RAM prompt cache and clears its cells whenever another slot starts a task,
    so at eviction only the last used slot would still hold tokens to save. Idle slots that keep
    their cells can all be saved; when the shared buffer runs full, llama-server still purges
    idle slots one by one to make room. Set as a variable, not a flag: a build without the option
    ignores it, and a ``--cache-idle-slots`` on the command line still wins."""
    env = model.env
    if not kv_unified(model.cmd, env) or IDLE_SLOTS_ENV in env or IDLE_SLOTS_ENV.replace("_ARG_", "_ARG_NO_") in env:
        return env
    return {**env, IDLE_SLOTS_ENV: "0"}


StatFn = Callable[[str], "str | None"]


def file_identity(word: str) -> str | None:
    """``path|size|mtime_ns|inode`` of an existing file, or None."""
    try:
        st = os.stat(word)
    except (OSError, ValueError):
        return None
    if not os.path.isfile(word):
        return None
    return f"{os.path.realpath(word)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def key_words(cmd: Sequence[str], identity: StatFn = file_identity) -> list[str]:
    """The words that make the cache key: the binary's identity, then every argument except the
    ignored flags, each file argument replaced by its identity."""
    binary = cmd[0] if "/" in cmd[0] else (shutil.which(cmd[0]) or cmd[0])
    words = [identity(binary) or binary]
    i = 1
    while i < len(cmd):
        word = cmd[i]
        name = word.split("=", 1)[0]
        if name in IGNORED_FLAGS:
            has_value = "=" not in word and i + 1 < len(cmd) and not cmd[i + 1].startswith("-")
            i += 2 if has_value else 1
            continue
        words.append(identity(word) or word)
        i += 1
    return words


def cache_key(cmd: Sequence[str], identity: StatFn = file_identity) -> str:
    return hashlib.sha256("\0".join(key_words(cmd, identity)).encode()).hexdigest()


def model_dir_name(model_id: str) -> str:
    """A file-system-safe, collision-free folder name for a model ID."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_id)[:64].lstrip(".") or "model"
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def slot_file_name(key: str, slot: int) -> str:
    return f"{key[:32]}-slot{slot}.bin"


@dataclass
class Entry:
    model: str
    key: str
    slot: int
    file: str
    """Path relative to the cache directory: ``<model dir>/<file name>``."""
    bytes: int
    tokens: int
    used: float
    """When it was saved or last restored (seconds since the epoch): the LRU order."""


@dataclass
class CacheIndex:
    entries: list[Entry]

    def for_model(self, model: str) -> list[Entry]:
        return [e for e in self.entries if e.model == model]

    def split(self, model: str, key: str) -> tuple[list[Entry], list[Entry]]:
        """(entries that may be restored into ``model`` with ``key``, its stale entries)."""
        mine = self.for_model(model)
        return [e for e in mine if e.key == key], [e for e in mine if e.key != key]

    def record(self, entry: Entry) -> None:
        """Add or replace the entry of (model, key, slot)."""
        self.entries = [e for e in self.entries if (e.model, e.key, e.slot) != (entry.model, entry.key, entry.slot)]
        self.entries.append(entry)

    def remove(self, gone: Iterable[Entry]) -> None:
        ids = {id(e) for e in gone}
        self.entries = [e for e in self.entries if id(e) not in ids]

    def over_caps(self, max_bytes_per_model: int, max_bytes: int) -> list[Entry]:
        """Entries to drop, least recently used first, until every model is within its cap and
        all of them within the total."""
        drop: list[Entry] = []
        by_age = sorted(self.entries, key=lambda e: e.used)
        per_model: dict[str, int] = {}
        for entry in self.entries:
            per_model[entry.model] = per_model.get(entry.model, 0) + entry.bytes
        for entry in by_age:
            if per_model[entry.model] > max_bytes_per_model:
                drop.append(entry)
                per_model[entry.model] -= entry.bytes
        total = sum(per_model.values())
        for entry in by_age:
            if total <= max_bytes:
                break
            if entry not in drop:
                drop.append(entry)
                total -= entry.bytes
        return drop

    def to_json(self) -> str:
        return json.dumps({"version": 1, "entries": [asdict(e) for e in self.entries]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> CacheIndex:
        """Entries of a valid index; anything malformed is dropped (its files are swept)."""
        try:
            data = json.loads(text)
            raw = data["entries"] if data.get("version") == 1 else []
        except (ValueError, AttributeError, KeyError, TypeError):
            return cls([])
        entries = []
        for item in raw if isinstance(raw, list) else []:
            try:
                entry = Entry(**item)
            except TypeError:
                continue
            parts = Path(entry.file).parts
            if len(parts) == 2 and ".." not in parts and not entry.file.startswith("/"):
                entries.append(entry)
        return cls(entries)


# --------------------------------------------------------------------------- files


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def cache_dir(config: Config) -> Path | None:
    if config.prompt_cache.dir is not None:
        return config.prompt_cache.dir
    return config.source.parent / "prompt-cache" if config.source is not None else None


# --------------------------------------------------------------------------- the edge


class PromptCache:
    """Saves and restores one supervisor's backends' slots under ``root``."""

    def __init__(self, root: Path, settings: PromptCacheSettings, metrics: Metrics) -> None:
        self.root = root
        self.settings = settings
        self.metrics = metrics
        self._keys: dict[str, str] = {}
        """Model ID -> the key of the backend running now, taken when it was started: a model
        file replaced under a running backend must not label that backend's KV cells."""
        try:
            self.index = CacheIndex.from_json((root / INDEX_NAME).read_text())
        except OSError:
            self.index = CacheIndex([])
        self._drop_missing()
        self._sweep_orphans()

    @classmethod
    def for_config(cls, config: Config, metrics: Metrics) -> PromptCache | None:
        root = cache_dir(config)
        return cls(root, config.prompt_cache, metrics) if root is not None else None

    def enabled_for(self, model: ModelConfig) -> bool:
        return enabled_for(model, self.settings)

    def reconfigure(self, settings: PromptCacheSettings) -> None:
        """``x-promptCache`` from a reload (same folder): the caps apply at once (least recently
        used slots dropped), the time bounds from the next save or restore, ``minCtx`` from the
        next start (a running backend keeps what it was started with)."""
        self.settings = settings
        self._enforce_caps()
        self._write_index()

    def model_dir(self, model_id: str) -> Path:
        return self.root / model_dir_name(model_id)

    def launch_config(self, model: ModelConfig) -> ModelConfig:
        """The model as it is started: with ``--slot-save-path`` when the cache is on for it (the
        supervisor owns the folder) and idle slots kept in a unified KV cache (every occupied slot
        can then be saved, see :func:`keep_idle_slots`); unchanged when it is off or the folder
        cannot be made."""
        if not self.enabled_for(model):
            return model
        self._keys[model.id] = cache_key(model.cmd)
        try:
            ensure_private_dir(self.root)
            folder = ensure_private_dir(self.model_dir(model.id))
        except OSError as exc:
            log.warning("prompt cache: cannot use %s (%s); %s starts without it", self.root, exc, model.id)
            return model
        return replace(model, cmd=(*model.cmd, SLOT_SAVE_PATH, str(folder)), env=keep_idle_slots(model))

    def active_for(self, model: ModelConfig) -> bool:
        """The backend was started with our ``--slot-save-path``."""
        return flag_value(model.cmd, (SLOT_SAVE_PATH,)) == str(self.model_dir(model.id))

    # -- save

    async def save(
        self, model: ModelConfig, session: aiohttp.ClientSession, auth: Mapping[str, str] | None = None
    ) -> None:
        """Save every slot that holds tokens; bounded by ``saveTimeout`` in all. ``auth``: the
        backend's own key (:attr:`Backend.auth_headers`), else one from its ``--api-key``."""
        key = self.key_of(model)
        started = time.monotonic()
        saved = 0
        async with _bounded(
            self.settings.save_timeout,
            self.metrics.prompt_cache_saves,
            model.id,
            doing=f"saving {model.id}'s slots",
            then="stopping it without the rest",
            failed=f"save {model.id}'s slots",
        ):
            saved = await self._save_slots(model, session, key, _auth(model, auth))
        if saved:
            log.info("prompt cache: saved %d slot(s) of %s in %.3fs", saved, model.id, time.monotonic() - started)
        self._enforce_caps()  # slots saved before a timeout or failure are kept
        self._write_index()

    async def _save_slots(
        self, model: ModelConfig, session: aiohttp.ClientSession, key: str, headers: Mapping[str, str]
    ) -> int:
        base = model.proxy.rstrip("/")
        async with session.get(base + "/slots", headers=headers) as resp:
            if resp.status != 200:
                raise ValueError(f"GET /slots answered {resp.status}")
            slots = await resp.json()
        folder = self.model_dir(model.id)
        saved = 0
        for slot in slots if isinstance(slots, list) else []:
            tokens = slot.get("n_prompt_tokens") if isinstance(slot, dict) else None
            if not isinstance(tokens, int) or tokens <= 0 or not isinstance(slot.get("id"), int):
                continue  # an empty slot: nothing worth keeping
            name = slot_file_name(key, slot["id"])
            async with session.post(
                f"{base}/slots/{slot['id']}?action=save", headers=headers, json={"filename": TEMP_PREFIX + name}
            ) as resp:
                body = await resp.json(content_type=None)
            if resp.status != 200:
                self.metrics.prompt_cache_saves.inc(model=model.id, outcome="failed")
                log.warning("prompt cache: slot %s of %s not saved: %s", slot["id"], model.id, body)
                continue
            final = folder / name
            os.chmod(folder / (TEMP_PREFIX + name), 0o600)
            os.replace(folder / (TEMP_PREFIX + name), final)
            self.index.record(
                Entry(
                    model.id,
                    key,
                    slot["id"],
                    f"{folder.name}/{name}",
                    final.stat().st_size,
                    int(body.get("n_saved", tokens)),
                    time.time(),
                )
            )
            self.metrics.prompt_cache_saves.inc(model=model.id, outcome="saved")
            saved += 1
        return saved

    def sweep(self, model_id: str) -> None:
        """After the backend stopped: remove what a save cut short left behind."""
        folder = self.model_dir(model_id)
        for path in folder.glob(TEMP_PREFIX + "*") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                path.unlink()

    # -- restore

    async def restore(
        self, model: ModelConfig, session: aiohttp.ClientSession, auth: Mapping[str, str] | None = None
    ) -> int:
        """Restore the slots saved under this model's current key (bounded by
        ``restoreTimeout``); refuse, count and delete those saved under another key. Returns
        how many slots were restored. Failures only cost the prefill they would have saved."""
        matching, stale = self.index.split(model.id, self.key_of(model))
        if stale:
            log.warning(
                "prompt cache: %d saved slot(s) of %s were made with another model file, build or "
                "KV flags; refusing them",
                len(stale),
                model.id,
            )
            self.metrics.prompt_cache_restores.inc(len(stale), model=model.id, outcome="refused")
            self._drop(stale)
        restored = 0
        async with _bounded(
            self.settings.restore_timeout,
            self.metrics.prompt_cache_restores,
            model.id,
            doing=f"restoring {model.id}",
            then="serving without the rest",
            failed=f"restore {model.id}",
        ):
            headers = _auth(model, auth)
            for entry in sorted(matching, key=lambda e: e.slot):
                restored += await self._restore_one(model, session, entry, headers)
        if matching or stale:
            self._write_index()
        return restored

    async def _restore_one(
        self, model: ModelConfig, session: aiohttp.ClientSession, entry: Entry, headers: Mapping[str, str]
    ) -> int:
        async with session.post(
            f"{model.proxy.rstrip('/')}/slots/{entry.slot}?action=restore",
            headers=headers,
            json={"filename": Path(entry.file).name},
        ) as resp:
            body = await resp.json(content_type=None)
        if resp.status != 200:
            log.warning("prompt cache: slot %d of %s not restored: %s", entry.slot, model.id, body)
            self.metrics.prompt_cache_restores.inc(model=model.id, outcome="failed")
            self._drop([entry])
            return 0
        entry.used = time.time()
        self.metrics.prompt_cache_restores.inc(model=model.id, outcome="restored")
        log.info("prompt cache: restored slot %d of %s (%s tokens)", entry.slot, model.id, body.get("n_restored"))
        return 1

    # -- bookkeeping

    def key_of(self, model: ModelConfig) -> str:
        return self._keys.get(model.id) or cache_key(model.cmd)

    def _drop(self, entries: list[Entry]) -> None:
        for entry in entries:
            with contextlib.suppress(OSError):
                (self.root / entry.file).unlink()
        self.index.remove(entries)

    def _drop_missing(self) -> None:
        self.index.remove([e for e in self.index.entries if not (self.root / e.file).is_file()])

    def _sweep_orphans(self) -> None:
        """Slot files no entry names (a crash between a save and the index write) only take space."""
        known = {self.root / e.file for e in self.index.entries}
        for path in self.root.glob("*/*.bin") if self.root.is_dir() else ():
            if path not in known:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _enforce_caps(self) -> None:
        drop = self.index.over_caps(self.settings.max_mib_per_model << 20, self.settings.max_mib << 20)
        if drop:
            log.info("prompt cache: dropping %d least recently used slot file(s) to stay within the caps", len(drop))
            self.metrics.prompt_cache_dropped.inc(len(drop))
            self._drop(drop)

    def _write_index(self) -> None:
        try:
            atomic_write_text(self.root / INDEX_NAME, self.index.to_json(), mode=0o600)
        except OSError as exc:
            log.warning("prompt cache: cannot write %s: %s", self.root / INDEX_NAME, exc)


@contextlib.asynccontextmanager
async def _bounded(
    timeout: float, counter: Counter, model_id: str, *, doing: str, then: str, failed: str
) -> AsyncIterator[None]:
    """A save or restore within ``timeout``; a timeout or a failure is logged and counted, never
    raised: it only costs the prefill the cache would have saved."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        log.warning("prompt cache: %s took over %gs; %s", doing, timeout, then)
        counter.inc(model=model_id, outcome="timeout")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        log.warning("prompt cache: cannot %s: %s", failed, exc)
        counter.inc(model=model_id, outcome="failed")


def _auth(model: ModelConfig, given: Mapping[str, str] | None) -> Mapping[str, str]:
    """The headers for the slot endpoints: ``given`` (the supervisor's per-start key), else the
    backend's own ``--api-key`` when it was started with one."""
    if given is not None:
        return given
    key = flag_value(model.cmd, ("--api-key",))
    return {"Authorization": f"Bearer {key.split(',')[0]}"} if key else {}
