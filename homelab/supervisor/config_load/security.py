"""``x-security`` in ``config.yaml`` (an extension key, checked strictly)::

    x-security:
      allowedHosts: [nas.lan]            # Host names answered besides loopback names, IP
                                         # addresses, this machine's hostname and --listen's host
      allowedOrigins: ["http://webui.lan:3000"]   # browser origins besides loopback ones
      maxBodyMiB: 64                     # request bodies above this get 413
      maxJsonDepth: 64                   # JSON nested deeper gets 400
      bodyTimeout: 60                    # seconds a client may take to send a request body
                                         # (between two pieces of a streamed upload)
      writeTimeout: 60                   # seconds a client may leave an answer unread

``allowedOrigins: ["*"]`` is accepted only with ``apiKeys`` (a page on any site could otherwise
use every model); ``allowedHosts: ["*"]`` turns the DNS-rebinding check off.
"""

from __future__ import annotations

from ..config import SecuritySettings
from ..security import normalize_origin
from .values import Value

SECURITY_KEYS = ("allowedHosts", "allowedOrigins", "maxBodyMiB", "maxJsonDepth", "bodyTimeout", "writeTimeout")


def parse_security(value: Value | None, api_keys: tuple[str, ...]) -> SecuritySettings:
    if value is None or value.is_null:
        return SecuritySettings()
    f = value.mapping(SECURITY_KEYS)
    defaults = SecuritySettings()
    hosts = []
    for item in f["allowedHosts"].items() if "allowedHosts" in f else []:
        name = item.string(allow_empty=False).strip().lower()
        if name != "*" and ("/" in name or " " in name):
            raise item.error(f"{name!r} is not a host name", "write the bare name clients use, e.g. nas.lan")
        hosts.append(name)
    origins = []
    for item in f["allowedOrigins"].items() if "allowedOrigins" in f else []:
        origin = item.string(allow_empty=False).strip()
        if origin == "*":
            if not api_keys:
                raise item.error(
                    "'*' lets a page on any web site use every model, and this config has no apiKeys",
                    "list the origins of the web apps you use (e.g. http://webui.lan:3000), or set apiKeys",
                )
        elif normalize_origin(origin) is None:
            raise item.error(
                f"{origin!r} is not a web origin",
                "write scheme://host[:port] with nothing after, e.g. http://webui.lan:3000",
            )
        origins.append(origin)
    return SecuritySettings(
        allowed_hosts=tuple(hosts),
        allowed_origins=tuple(origins),
        max_body_mib=f["maxBodyMiB"].integer(minimum=1) if "maxBodyMiB" in f else defaults.max_body_mib,
        max_json_depth=f["maxJsonDepth"].integer(minimum=2) if "maxJsonDepth" in f else defaults.max_json_depth,
        body_timeout=f["bodyTimeout"].number(minimum=1) if "bodyTimeout" in f else defaults.body_timeout,
        write_timeout=f["writeTimeout"].number(minimum=1) if "writeTimeout" in f else defaults.write_timeout,
    )
