"""``routing`` (llama-swap's current spelling of ``groups``/``matrix``, and the scheduler's
priorities), ``selectors`` and ``profiles``.

``routing.router.use`` picks the engine (``group``, the default, or ``matrix``) and
``routing.router.settings`` holds both; the legacy top-level ``groups``/``matrix`` keys stay
valid, but a config may not mix them with ``routing.router`` (as upstream).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...matrix import GroupConfig, MatrixConfig, can_contain_all
from ...suggest import closest
from ..config import PeerConfig, ProfileConfig, SelectorConfig, peer_model
from .groups import GROUP_KEYS, MATRIX_KEYS, parse_groups, parse_matrix
from .models import ModelConfig, suggest_model
from .values import Value

ROUTING_KEYS = ("router", "scheduler")
ROUTER_KEYS = ("use", "settings")
ROUTER_SETTINGS_KEYS = ("groups", "matrix")
SCHEDULER_KEYS = ("use", "settings")
ROUTERS = ("group", "matrix")
SCHEDULERS = ("fifo",)
SELECTOR_KEYS = ("strategy", "targets", "settings", "name", "description", "unlisted", "metadata")
STRATEGIES = ("warm", "pin", "spillover")
PROFILE_KEYS = ("description", "pins")


@dataclass
class Routing:
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    matrix: MatrixConfig | None = None
    fifo_priority: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def non_empty(value: Value | None) -> bool:
    return value is not None and not value.is_null and bool(value.entries())


def pick(value: Value, allowed: tuple[str, ...]) -> str:
    text = value.string()
    if text not in allowed:
        near = closest(text, allowed)
        raise value.error(
            f"unknown value {text!r}", f"did you mean {near!r}?" if near else f"use one of {', '.join(allowed)}"
        )
    return text


def parse_routing(
    root: Value, top: Mapping[str, Value], models: Mapping[str, ModelConfig], aliases: Mapping[str, str]
) -> Routing:
    result = Routing()
    routing = top["routing"].mapping(ROUTING_KEYS) if "routing" in top else {}
    router = routing["router"].mapping(ROUTER_KEYS) if "router" in routing else {}
    settings = router["settings"].mapping(ROUTER_SETTINGS_KEYS) if "settings" in router else {}
    use = pick(router["use"], ROUTERS) if "use" in router else ""
    legacy_matrix = top.get("matrix") if "matrix" in top and not top["matrix"].is_null else None
    legacy = legacy_matrix is not None or non_empty(top.get("groups"))
    settings_matrix = settings.get("matrix") if "matrix" in settings and not settings["matrix"].is_null else None
    current = bool(use) or settings_matrix is not None or non_empty(settings.get("groups"))
    if legacy and current:
        raise top["routing"].error(
            "the config uses both the top-level groups/matrix and routing.router",
            "move the top-level keys into routing.router.settings (and set routing.router.use) and remove them",
        )
    if legacy:
        if legacy_matrix is not None and non_empty(top.get("groups")):
            raise root.entries()["matrix"][0].error(
                "a config cannot use both groups and matrix", "keep one of them (matrix is the more general)"
            )
        if legacy_matrix is not None:
            result.matrix = parse_matrix(legacy_matrix, models)
        else:
            result.groups = parse_groups(top.get("groups"), models, result.warnings)
    elif use == "matrix":
        if settings_matrix is None:
            raise router["use"].error(
                "routing.router.use is matrix but routing.router.settings.matrix is not set", "add the matrix"
            )
        result.matrix = parse_matrix(settings_matrix, models)
        if non_empty(settings.get("groups")):
            for _, value in settings["groups"].entries().values():
                value.mapping(GROUP_KEYS)
            result.warnings.append(
                f"{settings['groups'].source}: routing.router.settings.groups is unused (use: matrix)"
            )
    else:
        result.groups = parse_groups(settings.get("groups"), models, result.warnings)
        if settings_matrix is not None:
            settings_matrix.mapping(MATRIX_KEYS)  # keys only: llama-swap does not read it either
            result.warnings.append(
                f"{settings_matrix.source}:{settings_matrix.line}: routing.router.settings.matrix is unused "
                "(routing.router.use is group); set use: matrix to use it"
            )

    scheduler = routing["scheduler"].mapping(SCHEDULER_KEYS) if "scheduler" in routing else {}
    if "use" in scheduler:
        pick(scheduler["use"], SCHEDULERS)
    sched_settings = scheduler["settings"].mapping(("fifo",)) if "settings" in scheduler else {}
    fifo = sched_settings["fifo"].mapping(("priority",)) if "fifo" in sched_settings else {}
    for name, (key, value) in (fifo["priority"].entries() if "priority" in fifo else {}).items():
        model_id = name if name in models else aliases.get(name)
        if model_id is None:
            raise key.error(
                f"priority for {name!r}, which is not a model or alias", suggest_model(name, models, aliases)
            )
        result.fifo_priority[model_id] = value.integer()
    return result


def known_target(
    name: str, models: Mapping[str, ModelConfig], aliases: Mapping[str, str], peers: dict[str, PeerConfig]
) -> bool:
    """llama-swap's ResolveBaseModel: a model, an alias or a peer model."""
    return name in models or name in aliases or peer_model(peers, name) is not None


def parse_selectors(
    section: Value | None,
    models: Mapping[str, ModelConfig],
    aliases: Mapping[str, str],
    peers: dict[str, PeerConfig],
    routing: Routing,
) -> dict[str, SelectorConfig]:
    selectors: dict[str, SelectorConfig] = {}
    entries = section.entries("a mapping of selector IDs to selectors") if section is not None else {}
    for selector_id, (key, value) in entries.items():
        if not selector_id.strip():
            raise key.error("a selector ID must not be empty")
        if selector_id in models or selector_id in aliases:
            what = "model ID" if selector_id in models else "model alias"
            raise key.error(f"selector {selector_id!r} has the same name as a {what}", "rename the selector")
        if peer_model(peers, selector_id) is not None and "/" in selector_id:
            raise key.error(f"selector {selector_id!r} has the name of a peer model", "rename the selector")
        f = value.mapping(SELECTOR_KEYS)
        if "strategy" not in f:
            raise value.error("missing strategy", f"add strategy: one of {', '.join(STRATEGIES)}")
        strategy = pick(f["strategy"], STRATEGIES)
        target_values = f["targets"].items() if "targets" in f else []
        if not target_values:
            raise f.get("targets", value).error("targets must list at least one model")
        targets: list[str] = []
        resolved: list[str] = []
        local: list[str] = []
        for item in target_values:
            target = item.string(allow_empty=False)
            if target in entries:
                raise item.error(f"target {target!r} is a selector", "selectors cannot target other selectors")
            if not known_target(target, models, aliases, peers):
                raise item.error(
                    f"target {target!r} is not a model, alias or peer model", suggest_model(target, models, aliases)
                )
            model_id = target if target in models else aliases.get(target)
            if strategy == "warm" and model_id is None:
                raise item.error(f"target {target!r} is a peer model; strategy warm needs local models")
            if model_id is not None:
                local.append(model_id)
            else:
                peer, model = peer_model(peers, target) or (None, target)
                model_id = f"{peer.name}/{model}" if peer else target
            if strategy == "spillover" and model_id in resolved:
                raise item.error(f"targets name model {model_id!r} twice", "list each model once")
            resolved.append(model_id)
            targets.append(target)
        spillover = 1
        if "settings" in f:
            settings = f["settings"].mapping(("spillover",))
            if "spillover" in settings:
                spillover = settings["spillover"].integer(minimum=1)
        if strategy == "spillover":
            check_spillover_coexistence(value, selector_id, local, routing)
        metadata = f["metadata"].python() if "metadata" in f else {}
        if not isinstance(metadata, dict):
            raise f["metadata"].error("expected a mapping")
        selectors[selector_id] = SelectorConfig(
            id=selector_id,
            strategy=strategy,
            targets=tuple(targets),
            spillover=spillover,
            name=(f["name"].string().strip() or None) if "name" in f else None,
            description=(f["description"].string().strip() or None) if "description" in f else None,
            unlisted=f["unlisted"].boolean() if "unlisted" in f else False,
            metadata=metadata or {},
        )
    return selectors


def check_spillover_coexistence(at: Value, selector_id: str, local: list[str], routing: Routing) -> None:
    """Spillover runs several targets at once, so the router must let them (upstream's check)."""
    if len(local) <= 1:
        return
    if routing.matrix is not None:
        if not can_contain_all(routing.matrix, local):
            raise at.error(
                f"spillover selector {selector_id!r}: its local targets never run together in the matrix",
                "add a set that holds them all",
            )
        return
    group_of = {member: group for group in routing.groups.values() for member in group.members}
    first = group_of.get(local[0])
    if first is None:
        raise at.error(
            f"spillover selector {selector_id!r}: target {local[0]!r} is in no routing group",
            "put the targets in one group with swap: false",
        )
    if first.swap:
        raise at.error(
            f"spillover selector {selector_id!r}: its targets share group {first.name!r}, which swaps",
            f"set swap: false on group {first.name!r}",
        )
    for target in local[1:]:
        if group_of.get(target) is not first:
            raise at.error(
                f"spillover selector {selector_id!r}: targets {local[0]!r} and {target!r} are in different groups",
                "put them in one group with swap: false",
            )


def parse_profiles(
    section: Value | None,
    models: Mapping[str, ModelConfig],
    aliases: Mapping[str, str],
    peers: dict[str, PeerConfig],
    selectors: Mapping[str, SelectorConfig],
) -> dict[str, ProfileConfig]:
    profiles: dict[str, ProfileConfig] = {}
    entries = section.entries("a mapping of profile names to profiles") if section is not None else {}
    for name, (key, value) in entries.items():
        if not name.strip():
            raise key.error("a profile name must not be empty")
        if not value.is_null and not isinstance(value.python(), dict):
            raise value.error(
                "a profile is a mapping with description and pins", "the old list form is gone upstream too"
            )
        f = value.mapping(PROFILE_KEYS)
        pin_entries = f["pins"].entries() if "pins" in f else {}
        if not pin_entries:
            raise f.get("pins", value).error("pins must have at least one entry", 'write pins: {"requested-id": model}')
        pins: dict[str, str] = {}
        for pin, (pin_key, target_value) in pin_entries.items():
            if not pin.strip():
                raise pin_key.error("a pin name must not be empty")
            if "/" in pin and peer_model(peers, pin) is not None:
                raise pin_key.error(f"pin {pin!r} is a peer model's name", "pin another name")
            target = "" if target_value.is_null else target_value.string()
            if target and not known_target(target, models, aliases, peers) and target not in selectors:
                raise target_value.error(
                    f"pin target {target!r} is not a model, alias, peer model or selector",
                    suggest_model(target, {**models, **selectors}, aliases),
                )
            pins[pin] = target
        profiles[name] = ProfileConfig(
            id=name, pins=pins, description=f["description"].string() if "description" in f else ""
        )
    return profiles
