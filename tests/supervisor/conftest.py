"""Helpers for supervisor tests: fake backends on free loopback ports, in-process supervisors."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from homelab.address import free_loopback_port as free_port
from homelab.supervisor.app import Running, start_server
from homelab.supervisor.config import Config, ModelConfig

FAKE = Path(__file__).with_name("fake_llama_server.py")


def fake_model(model_id: str, *flags: str, port: int | None = None, **fields: Any) -> ModelConfig:
    """A ModelConfig whose cmd runs the fake llama-server with ``flags``."""
    port = port or free_port()
    cmd = (sys.executable, "-S", str(FAKE), "--port", str(port), "--name", model_id, *flags)
    fields.setdefault("unload_timeout", 2.0)
    return ModelConfig(id=model_id, cmd=cmd, proxy=f"http://127.0.0.1:{port}", port=port, **fields)


def make_config(*models: ModelConfig, **fields: Any) -> Config:
    fields.setdefault("health_check_timeout", 10.0)
    return Config(models={m.id: m for m in models}, **fields)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``running = await serve(config)``: an in-process supervisor on a free port, closed after."""
    started: list[Running] = []

    async def start(config: Config, **kwargs: Any) -> Running:
        running = await start_server(config, "127.0.0.1", 0, drain_timeout=kwargs.pop("drain_timeout", 2.0), **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()
