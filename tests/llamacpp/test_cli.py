"""``homelab source HOST`` and ``homelab build HOST``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from homelab.cli import main

from .conftest import write_inventory
from .test_patches import diff_of, replace


def test_source_then_build_then_up_to_date(upstream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, patches=["p.patch"])
    (inv / "patches" / "p.patch").write_text(diff_of(upstream, replace("fit.c", "return 0", "return 1")))
    assert main(["source", "box", "--inventory", str(inv)]) == 0
    out = capsys.readouterr().out
    assert "box: llama.cpp b100" in out and "1 patch(es) ready in" in out
    assert main(["build", "box", "--inventory", str(inv), "-q", "--target", "llama-fit-params"]) == 0
    out = capsys.readouterr().out
    assert "llama-server built in" in out
    server = Path(out.rsplit(": ", 1)[1].strip())
    assert (server.parent / "llama-fit-params").is_file()
    assert main(["build", "box", "--inventory", str(inv), "-q", "--target", "llama-fit-params"]) == 0
    assert "llama-server up to date" in capsys.readouterr().out
    assert main(["source", "box", "--inventory", str(inv), "--target", "llama-fit-params"]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(["server-flags", str(server)]) == 0
    assert "ctx-size" in capsys.readouterr().out.split()
    assert main(["bench", "build-check", "box", "--inventory", str(inv), "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "build key check: median" in out and "patch pre-check:" in out


def test_user_errors_are_one_line_with_exit_2(upstream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, patches=["missing.patch"])
    assert main(["build", "box", "--inventory", str(inv), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("homelab: error: ") and "missing.patch" in err and err.count("\n") == 1
    write_inventory(tmp_path / "inv", upstream, ref="no-such-tag")
    assert main(["source", "box", "--inventory", str(inv)]) == 2
    assert "llama_cpp.ref 'no-such-tag'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("hipconfig") is not None or Path("/opt/rocm/bin/hipconfig").exists(), reason="ROCm is installed")
def test_missing_toolchain_fails_before_anything_starts(upstream: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, backend="hip", gpus=[{"name": "xtx", "vram_mib": 24560, "arch": "gfx1100"}])
    for command in ("source", "build"):
        assert main([command, "box", "--inventory", str(inv)]) == 2
        err = capsys.readouterr().err
        assert "cannot build llama.cpp for host 'box' backend hip: missing ROCm" in err and "hipcc" in err
    assert not (Path(os.environ["HOMELAB_STATE"]) / "sources").exists()  # nothing was fetched
