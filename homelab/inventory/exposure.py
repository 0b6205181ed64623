"""Who can reach the endpoint: a listen address beyond loopback needs API keys.

Without ``runtime.api_key_env`` the endpoint answers anyone who reaches its port, so binding it
to a LAN address or every interface would hand every model (and other users' prompts through
``/upstream/<model>/slots``) to the whole network. That is refused at validate time unless the
host file says ``runtime.allow_no_key: true`` (a firewall or an authenticating proxy in front).
"""

from __future__ import annotations

from ..address import is_loopback, split_host_port
from .problems import Problem
from .schema import Host
from .sourcemap import YamlDoc


def listen_problems(doc: YamlDoc, host: Host) -> list[Problem]:
    """``runtime.listen`` beyond loopback with neither API keys nor ``allow_no_key``."""
    runtime = host.runtime
    address, _port = split_host_port(runtime.listen)
    if is_loopback(address) or runtime.api_key_env or runtime.allow_no_key:
        return []
    return [
        doc.problem(
            ("runtime", "listen"),
            f"{runtime.listen} is reachable beyond this machine, but no API key guards it: set "
            "runtime.api_key_env: HOMELAB_API_KEYS (and export the keys when deploying), bind 127.0.0.1, "
            "or set runtime.allow_no_key: true if a firewall or an authenticating proxy guards the port",
        )
    ]
