"""The llama-swap ``config.yaml`` (its current format) that our supervisor and upstream llama-swap run.

Layout decisions:

- every model gets an explicit ``--port`` and ``proxy`` (see :mod:`homelab.render.ports`), so
  ``startPort``/``${PORT}`` never renumber models when one is added;
- macros: ``llama-server`` (the binary) and ``common`` (``--host 127.0.0.1`` plus every flag
  that all models share with the same value, when there are two or more models);
- recipe profiles become ``filters.setParamsByID`` IDs ``<id>:<profile>`` (one process serves
  them all: switching profile reloads nothing);
- ``healthCheckTimeout`` is llama-swap's one global value: the largest per-model need; the
  per-model need is also written as ``x-healthCheckTimeout`` for our supervisor;
- the plan's figures per device go to each model's ``x-devices`` (``CUDA0: MiB``..., ``CPU`` for
  system RAM where the host states ``ram_mib``) and the host's budget per device to
  ``x-deviceBudgetMiB``: our admission control checks every device a model uses (the total stays
  in ``metadata.vram_mib`` for people and llama-swap's UI);
- the supervisor's prompt cache (``x-promptCache``) lives in the host's state folder; a recipe's
  or host model's ``prompt_cache`` becomes the model's ``x-promptCache``;
- the matrix is written in llama-swap's current form, ``routing.router`` with ``use: matrix``
  (the top-level ``matrix:`` is its legacy spelling), with a short ``vars`` name (1-8 letters or
  digits) for every model the sets name: llama-swap's code does not need them, but its
  ``config-schema.json`` (which editors validate against) requires them; ``sets`` are the host's
  ``sets`` with those names, ``evict_costs`` one unit per GiB of weights (default 1);
- API keys are a ``${env.NAME}`` reference, resolved at start from the service's environment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..address import is_ip, is_loopback, split_host_port
from ..gpuarch import device_name
from ..inventory.multihost import secret_names, ssh_host
from ..inventory.resolved import ResolvedHost
from ..inventory.schema import FlagValue
from ..matrix import MatrixError, MatrixExpressionError, expand_sets, expression_names, rename_expression
from ..plan.estimate import MIB
from ..plan.host import host_budget
from ..suggest import did_you_mean
from .backends import BACKEND_HOST, Backend
from .errors import RenderError
from .formats import shell_word
from .inputs import RenderInputs
from .templating import render

DEFAULT_API_KEY_ENV = "HOMELAB_API_KEYS"
PROMPT_CACHE_DIR = "prompt-cache"
"""Saved slots live in the host's state folder, beside the generations: they outlive a deploy
(the supervisor drops those a new build, model file or flag set no longer matches)."""


def argv_words(flags: Sequence[tuple[str, FlagValue]], where: str) -> list[str]:
    """``--name value`` / ``--name`` words for one flag each (shell-quoted for llama-swap)."""
    words = []
    for name, value in flags:
        if value is True:
            words.append(f"--{name}")
        else:
            words.append(f"--{name} {shell_word(value, where=f'{where} --{name}')}")
    return words


def _same(a: tuple[str, FlagValue], b: tuple[str, FlagValue]) -> bool:
    """Equal flag and value, type included (``1`` is not ``true``, ``"1"`` is not ``1``)."""
    return a[0] == b[0] and a[1] == b[1] and type(a[1]) is type(b[1])


def own_flags(backend: Backend, shared: Sequence[tuple[str, FlagValue]]) -> list[tuple[str, FlagValue]]:
    """The backend's flags that are not in the shared block."""
    return [f for f in backend.server_flags() if not any(_same(f, s) for s in shared)]


def common_flags(backends: Sequence[Backend]) -> list[tuple[str, FlagValue]]:
    """Flags every backend sets to the same value (in the first backend's order)."""
    if len(backends) < 2:
        return []
    first = backends[0].server_flags()
    shared = []
    for name, value in first:
        if name in ("mmproj", "spec-draft-model"):  # per model, never a shared default
            continue
        if all(any(_same(f, (name, value)) for f in b.server_flags()) for b in backends[1:]):
            shared.append((name, value))
    return shared


def check_sets(host: ResolvedHost) -> dict[str, tuple[frozenset[str], ...]]:
    """The host's ``sets`` expanded; a set naming an unknown model is an error."""
    ids = {m.id for m in host.models}
    for name, text in host.sets.items():
        try:
            names = expression_names(text)
        except MatrixExpressionError as exc:
            raise RenderError(f"{host.host_file}: sets.{name}: {exc}") from None
        for unknown in sorted(names - ids):
            raise RenderError(
                f"{host.host_file}: sets.{name} names {unknown!r}, which is not a model on host "
                f"{host.name} (models: {', '.join(sorted(ids))})" + did_you_mean(unknown, ids)
            )
    try:
        return expand_sets(host.sets)
    except (MatrixError, MatrixExpressionError) as exc:
        raise RenderError(f"{host.host_file}: sets: {exc}") from None


def device_budget_mib(host: ResolvedHost, rpc_reserved: Mapping[int, int] | None = None) -> dict[str, int]:
    """The supervisor's admission budget per device (llama.cpp's names: ``CUDA0``..., ``CPU``): the
    plan's budget (:func:`homelab.plan.host.host_budget`, the same bytes the plan checks), less
    what head hosts' RPC layers take on this worker's GPUs (the plan's reservation)."""
    budget, _ = host_budget(host)
    reserved = rpc_reserved or {}
    out: dict[str, int] = {}
    for device, size in budget.items():
        if device == "cpu":
            out["CPU"] = size // MIB
        elif device.startswith("gpu") and device[3:].isdigit():
            index = int(device[3:])
            out[device_name(host.host.backend, index)] = max(0, size // MIB - reserved.get(index, 0))
    return {d: mib for d, mib in out.items() if mib > 0}


def model_devices_mib(backend: Backend, backend_kind: str, budget: Mapping[str, int]) -> dict[str, int]:
    """The plan's MiB per device for one model (``x-devices``), on the budgeted devices."""
    plan = backend.plan
    if plan is None:
        return {}
    out = {device_name(backend_kind, i): mib for i, mib in enumerate(plan.vram_mib) if mib > 0}
    if plan.ram_mib > 0:
        out["CPU"] = plan.ram_mib
    return {d: mib for d, mib in out.items() if d in budget}


def _no_macros(value: Any, where: str) -> None:
    """llama-swap expands ``${...}`` inside setParamsByID values: refuse what it would mangle."""
    if isinstance(value, str) and "${" in value:
        raise RenderError(f"{where}: {value!r} contains '${{', which llama-swap would expand as a macro")
    if isinstance(value, dict):
        for key, inner in value.items():
            _no_macros(str(key), where)
            _no_macros(inner, f"{where}.{key}")
    if isinstance(value, list):
        for inner in value:
            _no_macros(inner, where)


def _model_view(
    backend: Backend,
    shared: list[tuple[str, FlagValue]],
    gpus: bool,
    withheld: Sequence[str] = (),
    devices: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    model = backend.model
    where = f"model {backend.id}"
    own = own_flags(backend, shared)
    lines = ["${llama-server}"]
    lines += argv_words([("model", backend.model_file), ("port", backend.port)], where)
    lines.append("${common}")
    lines += argv_words(own, where)
    metadata: dict[str, Any] = {"recipe": model.recipe.name, "port": backend.port}
    ctx = dict(backend.flags).get("ctx-size")
    if ctx is not None:
        metadata["ctx_size"] = ctx
    if backend.plan is not None and gpus:
        if backend.plan.total is not None:
            metadata["vram_mib"] = backend.plan.total
    for pid, params in backend.profiles.items():
        _no_macros(params, f"{model.recipe_file or model.recipe.name}: profile {pid}")
    return {
        "id": backend.id,
        # llama-swap expands macros in descriptions too; "$ {" keeps the text readable and inert
        "description": model.recipe.description.strip().replace("\n", " ").replace("${", "$ {"),
        "notes": list(backend.notes),
        "cmd": lines,
        "proxy": f"http://{BACKEND_HOST}:{backend.port}",
        "ttl": backend.ttl,
        # the service's secrets, emptied: a backend inherits the environment otherwise
        "env": [f"{k}={v}" for k, v in backend.env.items()] + [f"{n}=" for n in withheld if n not in backend.env],
        "aliases": list(backend.aliases),
        "set_params_by_id": {pid: dict(params) for pid, params in backend.profiles.items()},
        "metadata": metadata,
        "health_timeout": backend.health_timeout,
        "prompt_cache": backend.model.prompt_cache,
        "devices": dict(devices or {}),
    }


def evict_costs(inputs: RenderInputs, sets: dict[str, tuple[frozenset[str], ...]]) -> dict[str, int]:
    """Reloading costs about one unit per GiB of weights: the solver keeps big models loaded."""
    in_sets = sorted({m for alternatives in sets.values() for alt in alternatives for m in alt})
    costs = {m: max(1, math.ceil(inputs.model_bytes.get(m, 0) / 1024**3)) for m in in_sets}
    return {m: c for m, c in costs.items() if c > 1}


VAR_LENGTH = 8
"""llama-swap's config-schema.json: var names are 1-8 letters or digits."""


def matrix_vars(model_ids: Sequence[str]) -> dict[str, str]:
    """A short, stable var name per model: its letters and digits cut to 8, a digit suffix on a
    clash (``think-big`` -> ``thinkbig``)."""
    names: dict[str, str] = {}
    for model_id in model_ids:
        base = "".join(ch for ch in model_id if ch.isascii() and ch.isalnum()) or "m"
        name = base[:VAR_LENGTH]
        counter = 2
        while name in names:
            suffix = str(counter)
            name = base[: VAR_LENGTH - len(suffix)] + suffix
            counter += 1
        names[name] = model_id
    return names


def matrix_view(inputs: RenderInputs, sets: dict[str, tuple[frozenset[str], ...]]) -> dict[str, Any] | None:
    """``routing.router.settings.matrix``: vars, evict_costs and sets, all by var name."""
    if not sets:
        return None
    in_sets = sorted({m for alternatives in sets.values() for alt in alternatives for m in alt})
    variables = matrix_vars(in_sets)
    short = {model_id: var for var, model_id in variables.items()}
    return {
        "vars": variables,
        "evict_costs": {short[m]: cost for m, cost in evict_costs(inputs, sets).items()},
        "sets": {name: rename_expression(text, short) for name, text in inputs.host.sets.items()},
    }


def peers_view(inputs: RenderInputs) -> list[dict[str, Any]]:
    """llama-swap ``peers:`` entries: ``proxy``, ``apiKey`` (a ``${env.X}`` reference), ``models``."""
    host = inputs.host
    if inputs.peers and host.host.runtime.kind == "router":
        raise RenderError(
            f"{host.host_file}: peers: runtime.kind router (llama-server --models-preset) cannot forward "
            "requests to other hosts; use runtime.kind supervisor or llama-swap"
        )
    local = set(backends_names(host))
    view = []
    for peer in sorted(inputs.peers, key=lambda p: p.name):
        for model in peer.models:
            if model in local or f"{peer.name}/{model}" in local:
                raise RenderError(
                    f"{host.host_file}: peer {peer.name!r} serves {model!r}, which is also a name on this host; "
                    "choose the peer's models with `models:` or rename one"
                )
            _no_macros(model, f"{host.host_file}: peers.{peer.name}.models")
        if not peer.models:
            raise RenderError(f"{host.host_file}: peer {peer.name!r} serves no models")
        view.append(
            {
                "name": peer.name,
                "proxy": peer.url,
                "api_key_env": peer.api_key_env,
                "models": list(peer.models),
            }
        )
    return view


def backend_key_flags(inputs: RenderInputs) -> list[tuple[str, FlagValue]]:
    """Under upstream llama-swap with API keys, every backend checks the same keys (from the key
    file): llama-swap passes the client's ``Authorization`` header through unchanged, so clients
    keep working while a direct call to a backend's port needs a key too. llama-swap cannot add
    a header of its own for local models, so without keys the backends stay open to local users.
    ``homelab serve`` protects its backends itself."""
    runtime = inputs.host.host.runtime
    if runtime.kind != "llama-swap" or not runtime.api_key_env:
        return []
    return [("api-key-file", str(inputs.paths.api_key_file))]


def allowed_host_names(host: ResolvedHost) -> list[str]:
    """``x-security.allowedHosts``: the names other machines reach this endpoint by (its
    ``lan_address`` and ssh host, when they are names). ``homelab serve`` answers only to loopback
    names, IP addresses, its own hostname and these (a foreign ``Host`` is DNS rebinding)."""
    address, _port = split_host_port(host.host.runtime.listen)
    if is_loopback(address):
        return []
    names = {name.lower() for name in (host.host.lan_address, ssh_host(host.host)) if name}
    return sorted(name for name in names if not is_loopback(name) and not is_ip(name))


def backends_names(host: ResolvedHost) -> list[str]:
    return [name for m in host.models for name in m.names()]


def render_config(inputs: RenderInputs, backends: Sequence[Backend]) -> str:
    host = inputs.host
    runtime = host.host.runtime
    sets = check_sets(host)
    shared = common_flags(backends)
    common = " ".join(argv_words([("host", BACKEND_HOST), *backend_key_flags(inputs), *shared], "macros.common"))
    api_key_env = runtime.api_key_env
    withheld = secret_names(host, inputs.peers)
    budget = device_budget_mib(host, inputs.rpc_reserved_mib)
    kind = host.host.backend
    return render(
        "config.yaml.j2",
        host=host.name,
        host_file=host.host_file.name,
        health_timeout=max([b.health_timeout for b in backends] or [runtime.health_check_timeout or 120]),
        global_ttl=runtime.ttl,
        device_budget=budget,
        api_key_env=api_key_env,
        binary=shell_word(inputs.server_binary, where="macros.llama-server"),
        common=common,
        models=[
            _model_view(b, shared, bool(host.host.gpus), withheld, model_devices_mib(b, kind, budget)) for b in backends
        ],
        matrix=matrix_view(inputs, sets),
        preload=sorted(b.id for b in backends if b.preload),
        peers=peers_view(inputs),
        prompt_cache_dir=str(inputs.paths.host_dir / PROMPT_CACHE_DIR),
        allowed_hosts=allowed_host_names(host),
    )
