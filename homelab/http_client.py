"""The one way the stages make plain HTTP requests (remote recipes, PR patches, source tarballs,
Hub files and sizes that huggingface_hub does not fetch for us): a requests session that says
who is asking. Proxies and CA bundles come from the environment, as requests reads them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    import requests

USER_AGENT = f"homelab/{__version__}"


def http_session() -> requests.Session:
    """A new session (connections reused within one job) with homelab's User-Agent."""
    import requests  # lazily: a no-op deploy makes no HTTP request and need not load requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session
