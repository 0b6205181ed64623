"""Profiles and selectors over HTTP: ``GET /api/profiles``, ``PUT /api/profiles/active``, the
per-request choice, and the ``/v1/models`` records for selectors, profile pins and
``capabilities`` (shapes as llama-swap's ``internal/server``)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .config import Capabilities
from .driver import SUPERVISOR_KEY, Supervisor
from .http_errors import error_response
from .scheduler import State
from .selection import Selection, SelectionError

SELECTION_KEY = web.AppKey("selection", Selection)


def selection_of(app: web.Application) -> Selection:
    """The app's selection state, following the supervisor's live config (a reload resets the
    active profile, as llama-swap's does)."""
    sup = app[SUPERVISOR_KEY]
    selection = app[SELECTION_KEY]
    if selection.config is not sup.config:
        selection.reconfigure(sup.config)
    return selection


def model_states(sup: Supervisor) -> dict[str, str]:
    return {model_id: s.state.value for model_id, s in sup.scheduler.models.items() if s.state is not State.STOPPED}


def profile_records(selection: Selection) -> list[dict[str, Any]]:
    """The profiles as ``GET /api/profiles`` lists them (the dashboard shows the same)."""
    return [
        {"id": p.id, "description": p.description, "pins": p.pins}
        for p in sorted(selection.config.profiles.values(), key=lambda p: p.id)
    ]


def selector_records(selection: Selection, states: dict[str, str]) -> list[dict[str, Any]]:
    """Each selector with the target a request for its name would reach now (after the active
    profile's pins; None with ``error`` when that request would be refused)."""
    records = []
    for selector in selection.config.selectors.values():
        record: dict[str, Any] = {
            "id": selector.id,
            "name": selector.name or "",
            "strategy": selector.strategy,
            "targets": list(selector.targets),
            "unlisted": selector.unlisted,
            "status": selection.selector_status(selector, states),
        }
        if selector.strategy == "spillover":
            record["spillover"] = selector.spillover
        try:
            record["picks"] = selection.preview(selector.id, states)
        except SelectionError as exc:
            record["picks"], record["error"] = None, exc.message
        records.append(record)
    return records


async def handle_profiles(request: web.Request) -> web.Response:
    selection = selection_of(request.app)
    return web.json_response({"active": selection.active, "profiles": profile_records(selection)})


async def handle_active_profile(request: web.Request) -> web.Response:
    selection = selection_of(request.app)
    try:
        body = json.loads(await request.read())
    except ValueError:
        return error_response(400, "invalid profile request: the body must be JSON", "invalid_request")
    if not isinstance(body, dict) or "name" not in body:
        return error_response(
            400, 'profile name is required: {"name": "<profile>"} or {"name": null}', "invalid_request"
        )
    name = body["name"]
    if name is not None and not isinstance(name, str):
        return error_response(400, "profile name must be a string or null", "invalid_request")
    try:
        changed = selection.set_profile(name or None)  # "" deactivates, as upstream
    except KeyError:
        known = ", ".join(sorted(selection.config.profiles)) or "none"
        return error_response(404, f"profile {name!r} not found (profiles: {known})", "profile_not_found")
    if changed:  # llama-swap's /api/events message for its UI
        activity = request.app[SUPERVISOR_KEY].activity
        activity.publish("profileChanged", {"active": selection.active})
        activity.refresh()  # the dashboard's selectors now pick through the new pins
    return web.json_response({"active": selection.active})


CAPPED_METADATA = ("architecture", "capabilities", "supported_parameters", "context_length")
"""/v1/models fields the capabilities fill; metadata keys of these names are dropped then."""


def capability_fields(caps: Capabilities) -> dict[str, Any]:
    """llama-swap's rendering of ``capabilities`` into OpenRouter-style /v1/models fields."""
    if caps.empty:
        return {}
    fields: dict[str, Any] = {}
    arch: dict[str, Any] = {}
    if caps.inputs:
        arch["input_modalities"] = list(caps.inputs)
    if caps.outputs:
        arch["output_modalities"] = list(caps.outputs)
    if caps.inputs and caps.outputs:
        arch["modality"] = "+".join(caps.inputs) + "->" + "+".join(caps.outputs)
    if arch:
        fields["architecture"] = arch
    flags: dict[str, bool] = {}
    both = bool(caps.inputs and caps.outputs)
    if "image" in caps.inputs:
        flags["vision"] = True
    if both and "audio" in caps.inputs and "text" in caps.outputs:
        flags["audio_transcriptions"] = True
    if both and "text" in caps.inputs and "audio" in caps.outputs:
        flags["audio_speech"] = True
    if both and "text" in caps.inputs and "image" in caps.outputs:
        flags["image_generation"] = True
    if both and "image" in caps.inputs and "image" in caps.outputs:
        flags["image_to_image"] = True
    if caps.tools:
        flags["function_calling"] = True
        fields["supported_parameters"] = ["tools", "tool_choice"]
    if caps.reranker:
        flags["reranker"] = True
    if flags or caps.inputs or caps.outputs:
        fields["capabilities"] = flags
    if caps.context > 0:
        fields["context_length"] = caps.context
    return fields


def listing_record(
    sup: Supervisor,
    listed_id: str,
    status: str,
    *,
    name: str | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    capabilities: Capabilities | None = None,
    internal: dict[str, Any] | None = None,
    owned_by: str = "homelab",
) -> dict[str, Any]:
    """One /v1/models record as llama-swap writes it: metadata and llama-swap's own facts under
    ``meta.llamaswap``, capabilities as top-level fields, ``meta.n_ctx`` from ``context``."""
    entry: dict[str, Any] = {
        "id": listed_id,
        "object": "model",
        "created": sup.started,
        "owned_by": owned_by,
        "status": {"value": status},
    }
    if name and name.strip():
        entry["name"] = name.strip()
    if description and description.strip():
        entry["description"] = description.strip()
    caps = capabilities or Capabilities()
    entry.update(capability_fields(caps))
    metadata = dict(metadata or {})
    if not caps.empty:
        metadata = {k: v for k, v in metadata.items() if k not in CAPPED_METADATA}
    llamaswap = {**metadata, **(internal or {})}
    meta: dict[str, Any] = {}
    if llamaswap:
        meta["llamaswap"] = llamaswap
    if caps.context > 0:
        meta["n_ctx"] = caps.context
    if meta:
        entry["meta"] = meta
    return entry


def selection_records(app: web.Application, listed: set[str]) -> list[dict[str, Any]]:
    """Selectors (unless unlisted) and the active profile's pins that name nothing else
    (``listed``: every ID /v1/models routes already)."""
    sup = app[SUPERVISOR_KEY]
    selection = selection_of(app)
    states = model_states(sup)
    records = []
    for selector in sup.config.selectors.values():
        listed.add(selector.id)
        if selector.unlisted:
            continue
        internal: dict[str, Any] = {
            "type": "selector",
            "strategy": selector.strategy,
            "targets": list(selector.targets),
        }
        if selector.strategy == "spillover":
            internal["spillover"] = selector.spillover
        records.append(
            listing_record(
                sup,
                selector.id,
                selection.selector_status(selector, states),
                name=selector.name,
                description=selector.description,
                metadata=selector.metadata,
                internal=internal,
            )
        )
    profile = selection.profile
    for pin, target in profile.pins.items() if profile else ():
        if target and pin not in listed:
            records.append(listing_record(sup, pin, "unloaded", internal={"type": "profile"}))
    return records
