"""The jinja2 environment every output is rendered with: StrictUndefined, format filters.

Templates only lay values out; every value reaches the file through a filter of
:mod:`homelab.render.formats`, so a template can never forget to escape.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import yaml

from .formats import FILTERS

if TYPE_CHECKING:
    import jinja2


def yaml_block(value: Any, indent: int) -> str:
    """A nested mapping/list as block YAML, indented by ``indent`` spaces (keys sorted)."""
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=True, allow_unicode=True, width=1 << 16)
    pad = " " * indent
    return "\n".join(pad + line for line in text.rstrip("\n").splitlines())


@functools.cache
def environment() -> jinja2.Environment:
    # lazily: the render stage's freshness check (every no-op deploy) imports this package but
    # renders nothing; jinja2 is a third of the package's import time
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("homelab.render", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.filters["yaml_block"] = yaml_block
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
