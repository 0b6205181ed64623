"""Profiles and selectors: which model a requested name means right now (pure state, no I/O).

llama-swap's order, kept here: the active profile's pin rewrites the requested name first (a pin
to "" disables the name: 404), then a selector picks one of its targets:

* ``pin``: always the first target;
* ``warm``: the first target that is ready, else the first that is starting, else the first;
* ``spillover``: fills targets in order, each up to ``spillover`` requests in flight, and only
  starts the next cold target when every active one is full (then the least busy active one,
  round robin among equals). Each choice holds a reservation until :meth:`Selection.release`.

Model states come from the caller (the scheduler's :class:`~homelab.supervisor.scheduler.State`
values as strings), so this module needs no clock and no supervisor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import Config, ProfileConfig, SelectorConfig

READY, STARTING, STOPPING = "ready", "starting", "stopping"


class SelectionError(Exception):
    """The requested name cannot be served now: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Choice:
    """What a request goes to: ``name`` (a model ID, alias or peer model), and the selector and
    the model key it reserved, to release when the request ends."""

    name: str
    selector: str | None = None
    reserved: str | None = None


@dataclass
class Spill:
    inflight: dict[str, int] = field(default_factory=dict)
    turn: int = 0


class Selection:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.active: str | None = None
        self.spills: dict[str, Spill] = {}

    # ----------------------------------------------------------------- profiles
    def set_profile(self, name: str | None) -> bool:
        """Activate a profile (None: none). Returns whether it changed; KeyError if unknown."""
        if name is not None and name not in self.config.profiles:
            raise KeyError(name)
        changed = name != self.active
        self.active = name
        return changed

    @property
    def profile(self) -> ProfileConfig | None:
        return self.config.profiles.get(self.active) if self.active is not None else None

    def pin(self, requested: str) -> str:
        """The requested name after the active profile's pins (unchanged when not pinned)."""
        profile = self.profile
        if profile is None or requested not in profile.pins:
            return requested
        target = profile.pins[requested]
        if not target:
            raise SelectionError(404, f"model {requested!r} is disabled by profile {profile.id!r}", "model_disabled")
        return target

    def pin_path(self, path: str) -> tuple[str, str] | None:
        """For ``/upstream/<path>``: the longest pin that is the path or a prefix of it followed
        by ``/``, as (pin, target), or None."""
        profile = self.profile
        if profile is None:
            return None
        path = path.lstrip("/")
        best: str | None = None
        for pin in profile.pins:
            if (path == pin or path.startswith(pin + "/")) and (best is None or len(pin) > len(best)):
                best = pin
        return (best, profile.pins[best]) if best is not None else None

    # ----------------------------------------------------------------- selectors
    def choose(self, requested: str, states: Mapping[str, str] | Callable[[], Mapping[str, str]]) -> Choice:
        """Pin, then selector. ``states``: model ID -> state of every model not stopped (or a
        function giving it, called only when a selector needs it: the common request pays nothing)."""
        name = self.pin(requested) if self.active is not None else requested
        selector = self.config.selectors.get(name)
        if selector is None:
            return Choice(name)
        if callable(states):
            states = states()
        if selector.strategy == "pin":
            return Choice(selector.targets[0], selector.id)
        if selector.strategy == "warm":
            return Choice(self.warm(selector, states), selector.id)
        return self.spillover(selector, states)

    def model_key(self, target: str) -> tuple[str, bool]:
        """(the model ID or ``peer/model``, whether it is local) for a selector target."""
        local = self.config.resolve(target)
        if local is not None:
            return local, True
        found = self.config.peer_model(target)
        return (f"{found[0].name}/{found[1]}" if found else target), False

    def warm(self, selector: SelectorConfig, states: Mapping[str, str]) -> str:
        for wanted in (READY, STARTING):
            for target in selector.targets:
                if states.get(self.model_key(target)[0]) == wanted:
                    return target
        return selector.targets[0]

    def spillover(self, selector: SelectorConfig, states: Mapping[str, str]) -> Choice:
        spill = self.spills.setdefault(selector.id, Spill())
        pair, rotated = self.spill_pick(selector, spill, states)
        if rotated:
            spill.turn += 1
        return self.reserve(selector.id, spill, pair)

    def spill_pick(
        self, selector: SelectorConfig, spill: Spill, states: Mapping[str, str]
    ) -> tuple[tuple[str, str], bool]:
        """The spillover choice as (target, model key) and whether it took the round-robin turn;
        reserves nothing (the dashboard's preview asks it too)."""
        active: list[tuple[str, str]] = []
        cold: list[tuple[str, str]] = []
        for target in selector.targets:
            key, local = self.model_key(target)
            busy = spill.inflight.get(key, 0) > 0
            state = states.get(key)
            if local and state == STOPPING:
                continue
            if (local and state in (READY, STARTING)) or busy:
                active.append((target, key))
            else:
                cold.append((target, key))
        if not active and not cold:
            raise SelectionError(
                503, f"selector {selector.id!r} has no target available (all stopping)", "model_unavailable"
            )
        if not active:
            return cold[0], False
        fewest = min(spill.inflight.get(key, 0) for _, key in active)
        if fewest >= selector.spillover and cold:
            return cold[0], False
        tied = [pair for pair in active if spill.inflight.get(pair[1], 0) == fewest]
        return tied[spill.turn % len(tied)], True

    @staticmethod
    def reserve(selector_id: str, spill: Spill, pair: tuple[str, str]) -> Choice:
        target, key = pair
        spill.inflight[key] = spill.inflight.get(key, 0) + 1
        return Choice(target, selector_id, key)

    def release(self, choice: Choice) -> None:
        if choice.selector is None or choice.reserved is None:
            return
        spill = self.spills.get(choice.selector)
        if spill is not None and spill.inflight.get(choice.reserved, 0) > 0:
            spill.inflight[choice.reserved] -= 1

    def preview(self, requested: str, states: Mapping[str, str]) -> str:
        """What :meth:`choose` would route ``requested`` to now, reserving nothing and moving no
        round-robin turn; SelectionError as :meth:`choose` raises it."""
        name = self.pin(requested)
        selector = self.config.selectors.get(name)
        if selector is None:
            return name
        if selector.strategy == "pin":
            return selector.targets[0]
        if selector.strategy == "warm":
            return self.warm(selector, states)
        return self.spill_pick(selector, self.spills.get(selector.id, Spill()), states)[0][0]

    # ----------------------------------------------------------------- reload
    def reconfigure(self, config: Config) -> None:
        """A reload selects no profile (as llama-swap); reservations of in-flight requests stay
        counted for selectors that still exist."""
        self.config = config
        self.active = None
        self.spills = {sid: spill for sid, spill in self.spills.items() if sid in config.selectors}

    # ----------------------------------------------------------------- listing
    def selector_status(self, selector: SelectorConfig, states: Mapping[str, str]) -> str:
        """llama-swap's /v1/models status of a selector: loaded when a local target it would
        use is ready or starting (``pin``: only the first target counts)."""
        for target in selector.targets:
            key, local = self.model_key(target)
            if local and states.get(key) in (READY, STARTING):
                return "loaded"
            if selector.strategy == "pin":
                break
        return "unloaded"
