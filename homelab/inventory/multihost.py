"""Hosts that work together: peers (one endpoint serves another host's models) and RPC workers
(a head host puts part of a model's layers on another host's ``rpc-server``).

A host file names other hosts of the same inventory (``peers:``, ``models[].rpc:``). One host
loads on its own (:func:`homelab.inventory.load_host`); :func:`load_related` then loads the hosts
it names and checks that they fit together, each problem with the file and line that names the
other host:

- the named host exists (else the nearest name), is not the host itself, is named once;
- an RPC worker has ``rpc_server:``; a peer serves models, and the subset it exposes
  (``peers[].models``) names models, profile IDs or aliases the peer really serves;
- the other host can be reached: its address (``runtime.listen`` for a peer, ``rpc_server.listen``
  for a worker) is not loopback-only unless both hosts live on the same machine;
- a peer's model names do not collide with this host's names (the supervisor routes ``peer/model``
  and bare names that only one place serves);
- router mode (llama-server ``--models-preset``) has no peers: such a host is refused.

The facts a render needs (each peer's URL, its model names, the key variable; each worker's
``host:port``) come out as :class:`PeerLink` and :class:`Related.workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..address import is_any_address, is_loopback, split_host_port
from ..suggest import did_you_mean
from .loader import list_hosts, load_host
from .problems import InventoryError, Problem
from .resolved import ResolvedHost
from .schema import ENV_NAME, Host, Peer
from .sourcemap import KeyPath, YamlDoc, YamlSyntaxError, display_name, parse_yaml


@dataclass(frozen=True)
class PeerLink:
    """One entry of the rendered llama-swap ``peers:`` section."""

    name: str
    """The peer's host name: the ``peers:`` key, and the prefix of ``<peer>/<model>``."""
    url: str
    """``http://<address>:<port>``: where this host reaches the peer's endpoint."""
    models: tuple[str, ...]
    """The names forwarded there (model IDs, profile IDs, aliases, or the chosen subset)."""
    api_key_env: str | None = None
    """Variable in this host's service environment holding the key the peer expects."""


@dataclass(frozen=True)
class Related:
    """A host with the hosts it names, checked together."""

    host: ResolvedHost
    hosts: dict[str, ResolvedHost] = field(default_factory=dict)
    """Every peer and RPC worker by name."""
    peers: tuple[PeerLink, ...] = ()
    workers: dict[str, str] = field(default_factory=dict)
    """RPC worker name -> ``address:port`` this host passes to ``--rpc``."""
    warnings: tuple[Problem, ...] = ()
    """Things that work but are likely mistakes (different llama.cpp refs across RPC)."""


# --------------------------------------------------------------------------------------------
# Addresses (pure)


def ssh_host(host: Host) -> str | None:
    """The host part of an ``ssh://user@host:port`` address (None for ``local``)."""
    if host.address == "local":
        return None
    return urlsplit(host.address).hostname


def machine(host: Host) -> str:
    """Which machine a host file describes, as far as the inventory can tell: hosts deployed
    with ``address: local`` share the machine homelab runs on; ssh hosts are their ssh host."""
    name = ssh_host(host)
    if name is None or is_loopback(name):
        return "local"
    return name.lower()


def same_machine(a: Host, b: Host) -> bool:
    return machine(a) == machine(b)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def reachable_address(target: Host, listen: str, *, seen_from: Host, what: str) -> tuple[str | None, str | None]:
    """(the address ``seen_from`` uses to reach ``target``'s ``listen``, or None; why not).

    - a loopback listen (127.0.0.1) is reachable only from the same machine;
    - every interface (0.0.0.0) is reached at ``lan_address``, else the ssh host, else (same
      machine) 127.0.0.1;
    - a specific address is reached at ``lan_address`` when given, else at that address.
    """
    address, _port = split_host_port(listen)
    lan = target.lan_address
    if is_loopback(address):
        if same_machine(target, seen_from) and (lan is None or is_loopback(lan)):
            return address, None
        return None, (
            f"host {target.name!r} {what} on {listen}, which only its own machine reaches; make it "
            f"listen on its LAN address (e.g. 192.168.1.20:{_port}) in hosts/{target.name}.yaml"
        )
    if is_any_address(address):
        found = lan or ssh_host(target)
        if found:
            return found, None
        if same_machine(target, seen_from):
            return "127.0.0.1", None
        return None, (
            f"host {target.name!r} {what} on every interface ({listen}) but the inventory does not "
            f"say how to reach it: set lan_address in hosts/{target.name}.yaml"
        )
    return lan or address, None


# --------------------------------------------------------------------------------------------
# Loading


def _doc(host: ResolvedHost) -> YamlDoc:
    """The host file again, for its line numbers (cheap: the file is small)."""
    display = display_name(host.host_file)
    try:
        return parse_yaml(host.host_file.read_text(encoding="utf-8"), display)
    except (OSError, UnicodeDecodeError, YamlSyntaxError):
        return YamlDoc(display=display, data={})


def served_names(host: ResolvedHost) -> list[str]:
    """Every name the host's endpoint answers to. Router mode has no profile IDs (presets have no
    setParamsByID), so only IDs and aliases there."""
    names: list[str] = []
    for model in host.models:
        if host.host.runtime.kind == "router":
            names += [model.id, *model.aliases]
        else:
            names += model.names()
    return list(dict.fromkeys(names))


def _peer_entry(entry: str | Peer) -> Peer:
    return Peer(host=entry) if isinstance(entry, str) else entry


@dataclass
class _Check:
    host: ResolvedHost
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    loaded: dict[str, ResolvedHost | None] = field(default_factory=dict)
    known: list[str] | None = None
    parsed: YamlDoc | None = None

    @property
    def doc(self) -> YamlDoc:
        """The host file, for line numbers: parsed only once there is something to report."""
        if self.parsed is None:
            self.parsed = _doc(self.host)
        return self.parsed

    def add(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(self.doc.problem(path, message))

    def other(self, name: str, path: KeyPath, role: str) -> ResolvedHost | None:
        """The host ``name`` of this inventory, or None with a problem at ``path``."""
        if name == self.host.name:
            self.add(path, f"a host cannot be its own {role}: name another host of the inventory")
            return None
        if name in self.loaded:
            return self.loaded[name]
        if self.known is None:
            self.known = list_hosts(self.host.inventory)
        other: ResolvedHost | None = None
        if name not in self.known:
            self.add(
                path,
                f"unknown host {name!r} (there is no hosts/{name}.yaml in {self.host.inventory})"
                + did_you_mean(name, [h for h in self.known if h != self.host.name], listing="known hosts"),
            )
        else:
            try:
                other = load_host(name, self.host.inventory)
            except InventoryError as exc:
                # its own problems, with its own file and line; this file says why it matters
                self.problems.extend(exc.problems)
                self.add(path, f"{role} {name!r} is invalid (its problems are listed); fix hosts/{name}.yaml")
        self.loaded[name] = other
        return other


def load_related(host: ResolvedHost) -> Related:
    """Load the peers and RPC workers ``host`` names, from its inventory, and check them.

    Raises :class:`InventoryError` with every problem (``file:line: key: what and the fix``).
    A host that names no other host returns at once without reading anything.
    """
    if not host.host.peers and not any(m.rpc_workers for m in host.models):
        return Related(host=host)
    check = _Check(host)
    peers = _check_peers(check)
    workers = _check_workers(check)
    if check.problems:
        raise InventoryError(check.problems)
    hosts = {name: other for name, other in check.loaded.items() if other is not None}
    return Related(host=host, hosts=hosts, peers=peers, workers=workers, warnings=tuple(check.warnings))


def _local_names(host: ResolvedHost) -> dict[str, str]:
    """This host's names -> what they are, for collision messages."""
    owners: dict[str, str] = {}
    for model in host.models:
        owners.setdefault(model.id, f"the ID of model {model.id!r}")
        for pid in model.profile_ids():
            owners.setdefault(pid, f"a profile ID of model {model.id!r}")
        for alias in model.aliases:
            owners.setdefault(alias, f"an alias of model {model.id!r}")
    return owners


def _check_peers(check: _Check) -> tuple[PeerLink, ...]:
    host = check.host
    if not host.host.peers:
        return ()
    if host.host.runtime.kind == "router":
        check.add(
            ("peers",),
            "runtime.kind router (llama-server --models-preset) cannot forward requests to other hosts: "
            "use runtime.kind supervisor or llama-swap on a host with peers",
        )
    local = _local_names(host)
    links: list[PeerLink] = []
    seen: dict[str, int] = {}
    claimed: dict[str, str] = {}  # bare name -> the peer that serves it first
    for index, entry in enumerate(host.host.peers):
        peer = _peer_entry(entry)
        at: KeyPath = ("peers", index) if isinstance(entry, str) else ("peers", index, "host")
        if peer.host in seen:
            check.add(at, f"peer {peer.host!r} is already peers[{seen[peer.host]}]; list each peer once")
            continue
        seen[peer.host] = index
        other = check.other(peer.host, at, "peer")
        if other is None:
            continue
        served = served_names(other)
        if not served:
            check.add(at, f"peer {peer.host!r} serves no models (hosts/{peer.host}.yaml has no models:)")
            continue
        if peer.models is None:
            models = served
        else:
            models = []
            for k, name in enumerate(peer.models):
                if name not in served:
                    why = (
                        " (router mode has no profile IDs)"
                        if other.host.runtime.kind == "router" and ":" in name
                        else ""
                    )
                    check.add(
                        ("peers", index, "models", k),
                        f"peer {peer.host!r} does not serve {name!r}{why}"
                        + did_you_mean(name, served, listing=f"names {peer.host} serves"),
                    )
                else:
                    models.append(name)
            models = list(dict.fromkeys(models))
        models_at: KeyPath = ("peers", index, "models") if peer.models is not None else at
        for name in models:
            if name in local:
                check.add(
                    models_at,
                    f"peer {peer.host!r} serves {name!r}, which is already {local[name]} on this host: "
                    f"a request for {name!r} would be ambiguous; choose the peer's models with "
                    f"`models:` (leaving {name!r} out), or rename one",
                )
            routed = f"{peer.host}/{name}"
            if routed in local:
                check.add(models_at, f"{routed!r} (peer {peer.host!r}, model {name!r}) is already {local[routed]}")
            if name in claimed and claimed[name] != peer.host:
                check.warn(
                    models_at,
                    f"{name!r} is served by peers {claimed[name]!r} and {peer.host!r}: the bare name goes to "
                    f"{claimed[name]!r}; ask for {peer.host}/{name} to reach the other",
                )
            claimed.setdefault(name, peer.host)
        listen = other.host.runtime.listen
        address, reason = reachable_address(other.host, listen, seen_from=host.host, what="serves its endpoint")
        if reason is not None:
            check.add(at, reason)
            continue
        # default: the peer's own variable; when this host uses the same name for its own keys,
        # both hosts share that key (README: "Several hosts")
        key_env = peer.api_key_env or other.host.runtime.api_key_env
        links.append(
            PeerLink(
                name=peer.host,
                url=f"http://{_url_host(address)}:{split_host_port(listen)[1]}",  # type: ignore[arg-type]  # address is set when reason is None
                models=tuple(models),
                api_key_env=key_env,
            )
        )
    return tuple(links)


def _check_workers(check: _Check) -> dict[str, str]:
    host = check.host
    workers: dict[str, str] = {}
    for index, entry in enumerate(host.host.models):
        model_id = entry.id or entry.recipe
        seen: set[str] = set()
        for k, name in enumerate(entry.rpc):
            at: KeyPath = ("models", index, "rpc", k)
            if name in seen:
                check.add(at, f"RPC worker {name!r} is listed twice for this model")
                continue
            seen.add(name)
            other = check.other(name, at, "RPC worker")
            if other is None:
                continue
            server = other.host.rpc_server
            if server is None:
                check.add(
                    at,
                    f"host {name!r} runs no rpc-server: add `rpc_server: {{listen: <its LAN address>:50052}}` "
                    f"to hosts/{name}.yaml (or remove it from rpc:)",
                )
                continue
            address, reason = reachable_address(other.host, server.listen, seen_from=host.host, what="runs rpc-server")
            if reason is not None:
                check.add(at, reason)
                continue
            workers[name] = f"{_url_host(address)}:{split_host_port(server.listen)[1]}"  # type: ignore[arg-type]  # address is set when reason is None
            mine, theirs = host.host.llama_cpp, other.host.llama_cpp
            if (mine.repo, mine.ref, mine.path, mine.tarball) != (theirs.repo, theirs.ref, theirs.path, theirs.tarball):
                check.warn(
                    at,
                    f"RPC worker {name!r} builds llama.cpp {theirs.ref} and this host {mine.ref} (model "
                    f"{model_id!r}): head and workers must speak the same RPC protocol version; use the same "
                    "llama_cpp on both",
                )
    return workers


def related_problems(host: ResolvedHost) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of :func:`load_related`, for ``homelab validate``."""
    try:
        related = load_related(host)
    except InventoryError as exc:
        return list(exc.problems) or [Problem(display_name(host.host_file), None, (), str(exc))], []
    return [], list(related.warnings)


_ENV_NAME = re.compile(ENV_NAME)


def secret_names(host: ResolvedHost, peers: tuple[PeerLink, ...] = ()) -> list[str]:
    """Environment variables the service needs from ``secrets.env``: its own keys, the peers'."""
    names = [host.host.runtime.api_key_env, *(p.api_key_env for p in peers)]
    return list(dict.fromkeys(n for n in names if n and _ENV_NAME.match(n)))
