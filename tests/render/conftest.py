"""Fixed fake inputs for the render tests: the example hosts with made-up paths and a plan.

Golden files are rendered from these (binary /opt/homelab/bin/llama-server, models under
/models, state under /var/lib/homelab, a fixed plan); nothing here reads the machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from homelab.inventory import ResolvedHost, load_host
from homelab.inventory.flagnames import known_flags
from homelab.inventory.multihost import load_related
from homelab.inventory.schema import Draft, Source
from homelab.render import PlannedModel, RenderInputs, StatePaths

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3

FAKE_BINARY = Path("/opt/homelab/bin/llama-server")
FAKE_HOMELAB = Path("/opt/homelab/venv/bin/homelab")
FAKE_STATE = Path("/var/lib/homelab")

# A fixed plan: MiB per GPU and the chosen context (what plans/<host>.json would say).
FAKE_PLAN: dict[str, dict[str, PlannedModel]] = {
    "xtx": {
        "qwen3.6-35b-a3b": PlannedModel(vram_mib=(21504,), ctx_size=102400),
        "qwen3.6-35b-a3b-mtp": PlannedModel(vram_mib=(21120,), ctx_size=65536),
        "qwen3.6-27b": PlannedModel(vram_mib=(21890,), ctx_size=65536),
        "mistral-small-3.2-24b": PlannedModel(vram_mib=(19980,), ctx_size=92160),
        "qwen3.5-9b": PlannedModel(vram_mib=(9870,), ctx_size=122880),
        "glm-4.7-flash": PlannedModel(vram_mib=(20480,), ctx_size=65536),
    },
    "duo3060": {
        "chat-small": PlannedModel(vram_mib=(3120, 0), ctx_size=4096),
        "think-small": PlannedModel(vram_mib=(3960, 7940), ctx_size=8192),
        "think-big": PlannedModel(vram_mib=(10950, 10870), ctx_size=98304),
    },
    "local": {
        "qwen3-0.6b": PlannedModel(vram_mib=(), total_mib=0, ctx_size=8192),
    },
    "nas": {
        "tiny": PlannedModel(vram_mib=(), total_mib=0, ram_mib=900, ctx_size=8192),
    },
    "rig4090": {
        "chat-4b": PlannedModel(vram_mib=(5120,), ctx_size=32768),
        # the 27B split over this card and rpc3090's (device order: CUDA0, then the RPC device)
        "think-split": PlannedModel(vram_mib=(21800,), ctx_size=131072, tensor_split=(0.52, 0.48)),
    },
}
FAKE_SIZES_GIB = {"qwen3-0.6b": 0.6, "chat-small": 2.5, "qwen3.5-9b": 6.0}
"""Weights in GiB (others 17.7): sizes healthCheckTimeout."""

FAKE_HASHES = {
    "host": "1" * 64,
    "recipes": {"example": "2" * 64},
    "lock": "3" * 64,
    "patches": {},
    "build": "4" * 64,
    "homelab": "5" * 64,
}


FAKE_LLAMA_CPP = {"source": "git", "repo": "https://github.com/ggml-org/llama.cpp", "ref": "b11434", "commit": "6" * 40}


def _fake_pins(source: Source, role: str, size: int) -> list[dict[str, object]]:
    """The lock's entry for one source as the manifest records it (made-up commit and sha256)."""
    if source.hf:
        return [{"role": role, "source": "hf", "repo": source.hf.repo, "revision": "7" * 40,
                 "path": source.hf.file, "size": size, "sha256": "8" * 64}]
    where = source.url.url if source.url else source.path.path if source.path else ""
    return [{"role": role, "source": source.kind, "path": where, "size": size, "sha256": "9" * 64}]


def _draft_name(draft: Draft) -> str:
    if draft.hf:
        return Path(draft.hf.file).name
    return Path(draft.url.url if draft.url else draft.path.path if draft.path else "draft.gguf").name


def example_host(name: str) -> ResolvedHost:
    return load_host(name, REPO)


def fake_inputs(host: ResolvedHost, **overrides: Any) -> RenderInputs:
    files = {m.id: (Path("/models") / f"{m.recipe.name}.gguf",) for m in host.models}
    drafts = {m.id: Path("/models") / "drafts" / _draft_name(m.draft) for m in host.models if m.draft is not None}
    sizes = {m.id: int(FAKE_SIZES_GIB.get(m.id, 17.7) * GIB) for m in host.models}
    plan = FAKE_PLAN.get(host.name)
    related = load_related(host)  # peers and RPC workers from the example inventory
    values: dict[str, Any] = dict(
        host=host,
        server_binary=FAKE_BINARY,
        accepted_flags=known_flags("b11434"),
        model_files=files,
        draft=drafts,
        model_bytes=sizes,
        paths=StatePaths(FAKE_STATE, host.name),
        homelab_executable=FAKE_HOMELAB,
        plan={k: v for k, v in plan.items() if k in files} if plan else None,
        plan_json=None,
        mtp_supported={m.id: m.mtp is not None for m in host.models},
        build_number=11434,
        build_label="llama.cpp b11434",
        input_hashes=FAKE_HASHES,
        peers=related.peers,
        rpc_workers=related.workers,
        llama_cpp=FAKE_LLAMA_CPP,
        model_pins={
            m.id: _fake_pins(m.source, "model", sizes[m.id])
            + (_fake_pins(m.draft, "draft", 639_447_456) if m.draft is not None else [])
            for m in host.models
        },
    )
    values.update(overrides)
    return RenderInputs(**values)


def with_runtime(host: ResolvedHost, **changes: Any) -> ResolvedHost:
    runtime = host.host.runtime.model_copy(update=changes)
    return dataclasses.replace(host, host=host.host.model_copy(update={"runtime": runtime}))


@pytest.fixture
def inputs_for() -> Callable[..., RenderInputs]:
    def make(name: str, **overrides: Any) -> RenderInputs:
        return fake_inputs(example_host(name), **overrides)

    return make
