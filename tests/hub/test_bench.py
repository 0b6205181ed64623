"""`homelab bench fetch` runs end to end on a small file (numbers are printed, never asserted)."""

from __future__ import annotations

import shutil

from homelab.cli import main


def test_bench_fetch_smoke(capsys) -> None:
    assert main(["bench", "fetch", "--size", "8M", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("homelab fetch (download + sha256 + HF cache)") == 2
    if shutil.which("curl"):
        assert "ratio" in out and out.count("curl -o:") == 2
    else:
        assert "curl not found" in out
