""" "Did you mean ...?": the near miss of a mistyped name, for error messages that name the fix.

Standard library only, so every stage and the supervisor can use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_LISTED = 25
"""Longer lists of choices are not spelled out in a message."""


def closest(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The choice nearest to ``word``: difflib's best match above ``cutoff``, else one that
    differs only in ``_``/``-`` or case (``ctx_size`` for ``ctx-size``); None when neither."""
    choices = sorted(set(choices))
    near = difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)
    if near:
        return near[0]
    normal = {c.replace("_", "-").lower(): c for c in choices}
    return normal.get(word.replace("_", "-").lower().lstrip("-"))


def did_you_mean(
    word: str,
    choices: Iterable[str],
    *,
    listing: str | None = None,
    fallback: str = "",
    cutoff: float = 0.6,
) -> str:
    """``; did you mean 'x'?`` for a near miss; else, with ``listing``, ``; <listing>: a, b, c``
    when there are a few choices; else ``fallback``."""
    choices = sorted(set(choices))
    near = closest(word, choices, cutoff=cutoff)
    if near is not None:
        return f"; did you mean {near!r}?"
    if listing is None or not choices or len(choices) > MAX_LISTED:
        return fallback
    return f"; {listing}: " + ", ".join(choices)
