"""Model references people type: a local GGUF path or ``hf://owner/repo/path.gguf[@rev]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HomelabError
from .facts import ModelFacts, facts_from_header

_HF = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?P<path>[^@]+?\.gguf)(?:@(?P<rev>[\w./-]+))?$")


class RefError(HomelabError):
    pass


@dataclass(frozen=True)
class HFRef:
    repo: str
    path: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"hf://{self.repo}/{self.path}@{self.revision}"


def parse_ref(text: str) -> HFRef | Path:
    if text.startswith("hf://"):
        m = _HF.match(text)
        if not m:
            raise RefError(f"{text!r} is not a Hub reference like hf://owner/repo/path/file.gguf[@revision]")
        return HFRef(m["repo"], m["path"], m["rev"] or "main")
    path = Path(text).expanduser()
    if not path.is_file():
        raise RefError(f"{text}: no such file (give a GGUF path or hf://owner/repo/file.gguf[@rev])")
    return path


def facts_from_ref(text: str) -> tuple[ModelFacts, str]:
    """Facts of a local file or a Hub file (header only, by Range requests), and where from."""
    from ..hub.gguf_header import (  # lazily: gguf (numpy) and requests
        read_local_header,
        read_remote_header,
    )

    ref = parse_ref(text)
    if isinstance(ref, HFRef):
        header = read_remote_header(ref.repo, ref.path, ref.revision)
        return facts_from_header(header, source=str(ref)), str(ref)
    return facts_from_header(read_local_header(ref), source=str(ref)), str(ref)
