"""Escaping for each target format, applied by the renderer (jinja2 filters), never by hand.

Every rendered value passes through exactly one of these on its way into a file:

- :func:`yaml_scalar`: a YAML scalar (``yaml.safe_dump`` of the one value, so quoting follows
  the YAML spec and ``yes``/``on``/``1.0``-like strings stay strings);
- :func:`shell_word`: one word of a llama-swap ``cmd`` (split shell-style, no shell, so
  ``shlex.quote`` is the right escaping), refusing ``${`` which llama-swap would read as a macro;
- :func:`ini_value`: a llama.cpp preset value (no quoting exists: ``;`` and ``#`` start a
  comment anywhere, a newline ends the value, so such values are refused);
- :func:`systemd_word` / :func:`systemd_env`: ``ExecStart=`` words and ``Environment=``
  assignments (``%`` specifiers doubled, ``$`` doubled in command lines, C-style quoting);
- :func:`env_file_value`: an ``EnvironmentFile=`` value (systemd's and ``shlex``'s rules agree
  on bare words and single quotes).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

from .errors import RenderError

_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def yaml_scalar(value: Any) -> str:
    """``value`` as one YAML flow scalar (strings quoted only when YAML needs it)."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"yaml_scalar takes a scalar, got {type(value).__name__}")
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 16)
    # safe_dump ends a document ("...\n" for plain scalars at top level); keep the scalar only
    text = text.rstrip("\n")
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    if "\n" in text:
        raise RenderError(f"cannot write {value!r} as a one-line YAML value")
    return text


def yaml_key(value: str) -> str:
    """A mapping key: same rules as a scalar (``a:b`` needs no quotes, ``on`` does)."""
    return yaml_scalar(str(value))


def shell_word(value: Any, *, where: str = "") -> str:
    """One word of a llama-swap ``cmd`` line."""
    text = flag_text(value)
    if "${" in text:
        raise RenderError(
            f"{where + ': ' if where else ''}value {text!r} contains '${{', which llama-swap would "
            "expand as a macro; remove it"
        )
    if "\n" in text or "\r" in text:
        raise RenderError(f"{where + ': ' if where else ''}value {text!r} spans lines; flags take one line")
    return shlex.quote(text)


def flag_text(value: Any) -> str:
    """A flag value as llama-server reads it: ``true`` -> ``true``, 1.5 -> ``1.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ini_value(value: Any, *, where: str = "") -> str:
    """A value in llama.cpp's preset INI (``key = value``)."""
    text = flag_text(value)
    bad = next((c for c in (";", "#", "\n", "\r") if c in text), None)
    if bad is not None or text != text.strip():
        what = {";": "';'", "#": "'#'", "\n": "a newline", "\r": "a carriage return"}.get(bad or "", "edge spaces")
        raise RenderError(
            f"{where + ': ' if where else ''}value {text!r} contains {what}, which llama.cpp's preset "
            "format cannot hold (it has no quoting); use runtime.kind: supervisor for this model"
        )
    return text


def _c_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_word(value: Any) -> str:
    """One word of ``ExecStart=``/``ExecReload=``: specifiers and variables escaped, quoted if needed."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise RenderError(f"command word {text!r} spans lines")
    text = text.replace("%", "%%").replace("$", "$$")
    if _BARE.fullmatch(text):
        return text
    return _c_quote(text)


def systemd_env(name: str, value: Any) -> str:
    """The value of one ``Environment=`` line: ``"NAME=value"`` (quoted, ``%`` doubled)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise RenderError(f"{name!r} is not a valid environment variable name")
    text = str(value)
    if "\n" in text or "\r" in text:
        raise RenderError(f"environment value for {name} spans lines")
    assignment = f"{name}={text}".replace("%", "%%")
    if _BARE.fullmatch(assignment):
        return assignment
    return _c_quote(assignment)


def systemd_path(value: Any) -> str:
    """A path in a setting that takes one path (``ReadWritePaths=``, ``EnvironmentFile=``)."""
    text = str(value)
    if any(c.isspace() for c in text):
        raise RenderError(
            f"path {text!r} contains whitespace, which systemd path settings cannot quote; "
            "move HOMELAB_STATE to a path without spaces"
        )
    return text.replace("%", "%%")


def systemd_text(value: Any) -> str:
    """Free text in a unit (``Description=``, ``User=``): one line, specifiers escaped."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise RenderError(f"unit text {text!r} spans lines")
    return text.replace("%", "%%")


def env_file_value(name: str, value: Any) -> str:
    """``NAME=value`` for an ``EnvironmentFile=`` (bare when safe, else single-quoted)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise RenderError(f"{name!r} is not a valid environment variable name")
    text = str(value)
    if "\n" in text or "\r" in text:
        raise RenderError(f"environment value for {name} spans lines")
    if _BARE.fullmatch(text) and "$" not in text:
        return f"{name}={text}"
    if "'" in text:
        raise RenderError(f"environment value for {name} contains a single quote; env files cannot hold it safely")
    return f"{name}='{text}'"


def env_reference(name: str) -> str:
    """``"${env.NAME}"``, double-quoted: llama-swap (and ``homelab serve``) substitute the value
    into the YAML text before parsing, escaping it for a double-quoted string; in a plain scalar
    a key holding `` #`` would be cut there (the rest read as a comment) and ``: `` would break
    the file."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise RenderError(f"{name!r} is not a valid environment variable name")
    return f'"${{env.{name}}}"'


FILTERS = {
    "yaml": yaml_scalar,
    "yaml_key": yaml_key,
    "shell": shell_word,
    "ini": ini_value,
    "systemd_word": systemd_word,
    "systemd_env": systemd_env,
    "systemd_path": systemd_path,
    "env_line": env_file_value,
    "systemd_text": systemd_text,
    "env_reference": env_reference,
}
