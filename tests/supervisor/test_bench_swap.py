"""``homelab bench swap --scenario prefetch`` end to end with the real llama-server, on the suite's
tiny models (too small to time the prefetch; the run checks the benchmark's machinery)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from homelab.cli import main


def test_the_prefetch_scenario_pairs_each_rounds_loads(
    llama_server_bin: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    models = ["--model", str(tiny_models["alpha"]), "--model", str(tiny_models["beta"])]
    argv = ["bench", "swap", "--server", str(llama_server_bin), "--scenario", "prefetch", *models]
    assert main([*argv, "--rounds", "2", "--drain-tokens", "8", "--scenario-args", "-c 512 -np 1 -t 1"]) == 0
    out = capsys.readouterr().out
    loads = {}
    for mode in ("prefetch", "no-prefetch", "warm"):
        load, first_token = (float(v) for v in re.findall(rf"^  {mode}\s+([\d.]+) ms .*?([\d.]+) ms", out, re.M)[0])
        assert 0 < load < first_token  # the load is part of the time to the first token
        loads[mode] = load
    paired = re.search(r"faster with the prefetch in ([0-2]) of 2 rounds, by (-?\d+) ms", out)
    assert paired, out
    # with two rounds, the median of the rounds' differences is the difference of the medians
    assert abs(int(paired.group(2)) - (loads["no-prefetch"] - loads["prefetch"])) <= 1.1
