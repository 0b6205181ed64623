"""Check that an activated generation serves: /health, /v1/models, optionally a tiny completion;
and that an rpc-server unit's port accepts connections (:func:`wait_for_port`).

``expected`` model IDs come from the generation's ``config.yaml`` (its ``models:`` keys); the
check waits until ``/v1/models`` lists all of them, which is also how a reload is seen to have
taken effect when the model set changed. With ``level="completion"`` each given model gets a
one-token completion request, which loads it: that catches a bad llama-server flag.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from ..address import base_url, wait_until_accepting

LEVELS = ("health", "models", "completion")


@dataclass
class VerifyResult:
    ok: bool
    steps: list[str] = field(default_factory=list)
    error: str = ""


def config_models(config_yaml: bytes | None) -> list[str]:
    """Model IDs defined in a llama-swap/supervisor config (empty if none or unreadable)."""
    if not config_yaml:
        return []
    try:
        data = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return []
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return []
    return [str(k) for k, v in models.items() if not (isinstance(v, dict) and v.get("unlisted"))]


def _request(url: str, api_key: str | None, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    # lazily: urllib.request brings http.client, ssl and email, which the install stage's
    # freshness check (every no-op deploy imports this module) never uses
    import urllib.request

    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def api_key_from_env(env_name: str | None) -> str | None:
    if not env_name:
        return None
    value = os.environ.get(env_name, "")
    return value.split(",")[0].strip() or None


def wait_for_port(
    listen: str, timeout: float, alive: Callable[[], bool] = lambda: True, what: str = "service"
) -> VerifyResult:
    """Wait until ``listen`` accepts a TCP connection: all that can be asked of llama.cpp's
    rpc-server without speaking its protocol."""
    error = wait_until_accepting(listen, timeout, alive, what)
    if error:
        return VerifyResult(ok=False, error=error)
    return VerifyResult(ok=True, steps=[f"{what} on {listen}: accepts connections"])


def verify(
    listen: str,
    expected: list[str],
    completion_models: list[str],
    level: str = "completion",
    timeout: float = 120.0,
    alive: Callable[[], bool] = lambda: True,
    api_key: str | None = None,
) -> VerifyResult:
    url = base_url(listen)
    result = VerifyResult(ok=False)
    deadline = time.monotonic() + timeout
    last = "no answer"
    # 1. /health
    while True:
        if not alive():
            result.error = f"the service exited before {url}/health answered"
            return result
        try:
            status, body = _request(f"{url}/health", api_key, timeout=2)
            if status == 200:
                break
            last = f"HTTP {status}: {body[:200].decode(errors='replace')}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            result.error = f"{url}/health did not answer 200 within {timeout:.0f} s (last: {last})"
            return result
        time.sleep(0.05)
    result.steps.append(f"{url}/health: ok")
    if level == "health":
        result.ok = True
        return result
    # 2. /v1/models lists every expected model
    missing: list[str] = list(expected)
    while True:
        try:
            status, body = _request(f"{url}/v1/models", api_key, timeout=5)
            if status == 200:
                listed = {m.get("id") for m in json.loads(body).get("data", [])}
                missing = [m for m in expected if m not in listed]
                if not missing:
                    break
                last = f"missing {', '.join(missing)}"
            else:
                last = f"HTTP {status}"
        except (OSError, ValueError, urllib.error.URLError) as exc:
            last = str(exc)
        if time.monotonic() > deadline or not alive():
            result.error = f"{url}/v1/models: {last}"
            return result
        time.sleep(0.1)
    result.steps.append(f"{url}/v1/models: {len(expected)} model(s) listed")
    if level != "completion":
        result.ok = True
        return result
    # 3. a one-token completion per model
    for model in completion_models:
        remaining = max(5.0, deadline - time.monotonic())
        body_json = {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
        try:
            status, body = _request(f"{url}/v1/completions", api_key, body_json, timeout=remaining)
        except (OSError, urllib.error.URLError) as exc:
            result.error = f"completion with {model!r}: {exc}"
            return result
        if status != 200:
            result.error = f"completion with {model!r}: HTTP {status}: {body[:300].decode(errors='replace')}"
            return result
        result.steps.append(f"completion with {model}: ok")
    result.ok = True
    return result
