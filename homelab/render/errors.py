"""The render stage's user error."""

from __future__ import annotations

from ..errors import HomelabError


class RenderError(HomelabError):
    """The inventory asks for something the render cannot write (or the build cannot run)."""
