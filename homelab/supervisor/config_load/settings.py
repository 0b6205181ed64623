"""llama-swap's settings for its own UI and logs: ``ui``, ``performance``, ``store``,
``logTimeFormat``, ``metricsMaxInMemory``, ``captureBuffer``; and ``upstream`` (the
``/upstream`` pass-through's ``ignorePaths``).

The UI-store keys are accepted with llama-swap's checks so a config moves over unchanged; what
the supervisor does instead is in docs/supervisor.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..config import DEFAULT_IGNORE_PATHS, DEFAULT_SESSION_HEADERS, PerformanceSettings
from .values import Value

LOG_TIME_FORMATS = (
    "", "ansic", "unixdate", "rubydate", "rfc822", "rfc822z", "rfc850", "rfc1123", "rfc1123z",
    "rfc3339", "rfc3339nano", "kitchen", "stamp", "stampmilli", "stampmicro", "stampnano",
)  # fmt: skip
MIN_PERFORMANCE_EVERY = 5.0
GO_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(value: Value) -> float:
    """Seconds in a Go duration string (``1h30m``, ``15s``, ``500ms``), as llama-swap reads it."""
    text = value.string().strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    position, seconds = 0, 0.0
    while position < len(body):
        match = GO_DURATION.match(body, position)
        if match is None:
            raise value.error(f"{text!r} is not a duration", "write it like 15s, 1m30s or 2h")
        seconds += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        position = match.end()
    if not body:
        raise value.error("empty duration", "write it like 15s")
    return sign * seconds


def parse_performance(value: Value | None) -> PerformanceSettings:
    if value is None or value.is_null:
        return PerformanceSettings()
    f = value.mapping(("disabled", "every"))
    every = go_duration(f["every"]) if "every" in f else MIN_PERFORMANCE_EVERY
    if every == 0:
        every = MIN_PERFORMANCE_EVERY  # as upstream: zero means the default
    if every < MIN_PERFORMANCE_EVERY:
        raise f["every"].error(f"must be at least {MIN_PERFORMANCE_EVERY:g}s")
    return PerformanceSettings(disabled=f["disabled"].boolean() if "disabled" in f else False, every=every)


def parse_session_headers(value: Value | None) -> tuple[str, ...]:
    """``ui.activity.session_id``: trimmed, empty and case-insensitive duplicates dropped."""
    if value is None:
        return DEFAULT_SESSION_HEADERS
    ui = value.mapping(("activity",))
    activity = ui["activity"].mapping(("session_id",)) if "activity" in ui else {}
    if "session_id" not in activity:
        return DEFAULT_SESSION_HEADERS
    headers: dict[str, str] = {}
    for item in activity["session_id"].items():
        name = item.string().strip()
        if name and name.lower() not in headers:
            headers[name.lower()] = name
    return tuple(headers.values())


def parse_store(value: Value | None, source: Path | None) -> Path | None:
    if value is None or value.is_null:
        return None
    f = value.mapping(("path",))
    if "path" not in f:
        raise value.error("store needs a path", "write store: {path: /var/lib/llama-swap/activity.sqlite}")
    path = Path(f["path"].string(allow_empty=False).strip()).expanduser()
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    if path.is_dir():
        raise f["path"].error(f"{path} is a directory, not a file")
    return path


def parse_ignore_paths(value: Value | None) -> tuple[re.Pattern[str], ...]:
    """``upstream.ignorePaths`` (regular expressions, searched anywhere in the path after the
    model, like Go's MatchString); none given means llama-swap's default."""
    if value is None or value.is_null:
        return DEFAULT_IGNORE_PATHS
    f = value.mapping(("ignorePaths",))
    patterns: list[re.Pattern[str]] = []
    for item in f["ignorePaths"].items() if "ignorePaths" in f else []:
        text = item.string()
        try:
            patterns.append(re.compile(text))
        except re.error as exc:
            raise item.error(f"not a valid regular expression: {exc}") from None
    return tuple(patterns) or DEFAULT_IGNORE_PATHS


def parse_log_time_format(top: Mapping[str, Value]) -> str:
    if "logTimeFormat" not in top:
        return ""
    text = top["logTimeFormat"].string().strip().lower()
    if text not in LOG_TIME_FORMATS:
        raise top["logTimeFormat"].error(
            f"unknown time format {text!r}", f"use one of {', '.join(repr(f) for f in LOG_TIME_FORMATS)}"
        )
    return text
