"""Golden files for the example hosts, and byte-identical output across runs.

Refresh after an intended change (then review the diff like code):

    HOMELAB_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/render/test_golden.py
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from homelab.render import render_host

from .conftest import example_host, fake_inputs

GOLDEN = Path(__file__).resolve().parent / "golden"
HOSTS = ("xtx", "duo3060", "local", "rig4090", "rpc3090", "nas")
"""rig4090: a head host (a model split with --rpc) with a peer; rpc3090: an RPC worker with no
models (only its rpc-server unit); nas: the peer, listening on the LAN with an API key."""


@pytest.mark.parametrize("host", HOSTS)
def test_golden(host: str) -> None:
    files = render_host(fake_inputs(example_host(host)))
    directory = GOLDEN / host
    if os.environ.get("HOMELAB_UPDATE_GOLDEN"):
        for old in sorted(directory.rglob("*"), reverse=True):
            if old.is_file():
                old.unlink()
        for name, text in files.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
    expected = {p.relative_to(directory).as_posix(): p.read_text() for p in directory.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(expected), "set of rendered files changed (HOMELAB_UPDATE_GOLDEN=1 to refresh)"
    for name, text in files.items():
        assert text == expected[name], f"{host}/{name} differs from the golden file (HOMELAB_UPDATE_GOLDEN=1 to refresh)"


def test_same_inputs_same_bytes() -> None:
    """Twice in this process, with the model order shuffled, and once in a fresh interpreter."""
    host = example_host("xtx")
    first = render_host(fake_inputs(host))
    shuffled = list(host.models)
    random.Random(7).shuffle(shuffled)
    import dataclasses

    again = render_host(fake_inputs(dataclasses.replace(host, models=tuple(shuffled))))
    assert again == first
    code = (
        "import json,sys; sys.path.insert(0, 'tests'); "
        "from render.conftest import example_host, fake_inputs; "
        "from homelab.render import render_host; "
        "print(json.dumps(render_host(fake_inputs(example_host('xtx')))))"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, check=True)
    import json

    assert json.loads(out.stdout) == first
