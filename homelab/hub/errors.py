"""Hub errors, and the translation of huggingface_hub's exceptions into messages that say what to do."""

from __future__ import annotations

from ..errors import HomelabError
from ..settings import hf_endpoint


class HubError(HomelabError):
    """A model file cannot be resolved, fetched or verified."""


class ChecksumMismatch(HubError):
    pass


def explain_hub_error(exc: Exception, repo: str, file: str | None, revision: str) -> HubError | None:
    """A :class:`HubError` for a huggingface_hub error we understand, else None (a bug or outage)."""
    # lazily: huggingface_hub is slow to import, errors are rare
    from huggingface_hub import errors as hf

    where = f"{repo}" + (f"/{file}" if file else "") + f" at revision {revision}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf.GatedRepoError) or status == 403:
        return HubError(
            f"{where}: access denied (HTTP {status or 401}, gated or private repository). Set HF_TOKEN to a "
            f"token with read access and accept the model's license on its page ({_page(repo)})."
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubError(
            f"{where}: revision {revision!r} not found in {repo}. Fix `revision:` in the recipe "
            "(a branch, tag or 40-hex commit of that repository)."
        )
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        return HubError(
            f"{where}: no such file in {repo}. Check `file:` in the recipe against {_page(repo)}/tree/main."
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubError(
            f"{where}: repository {repo!r} not found (HTTP {status or 404}). Check `repo:` in the recipe; "
            "if it is private or gated, set HF_TOKEN to a token with read access."
        )
    if isinstance(exc, hf.HfHubHTTPError):
        return HubError(f"{where}: the Hub answered HTTP {status}: {str(exc).splitlines()[0]}")
    return None


def _page(repo: str) -> str:
    return f"{hf_endpoint()}/{repo}"
