"""``homelab bench deploy``: the no-op ``doit deploy`` time (median of N) and one after a recipe edit."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..deploy.chain import load
from ..settings import CHECKOUT


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_deploy(host: str, extra: list[str], cpu: list[float] | None = None) -> tuple[float, int, str]:
    """Wall seconds, exit status and output of one ``doit deploy``; its CPU seconds (user + sys of
    the doit process and whatever it waited for) are appended to ``cpu``: on a shared machine the
    wall time mostly measures the neighbours, the CPU time measures us."""
    started, cpu_before = time.monotonic(), _children_cpu()
    out = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(CHECKOUT / "dodo.py"), "deploy", f"host={host}", *extra],
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
    )
    if cpu is not None:
        cpu.append(_children_cpu() - cpu_before)
    return time.monotonic() - started, out.returncode, (out.stdout + out.stderr).strip()


def _bytecode_note() -> str:
    """Said when the runs could keep no ``.pyc`` files: each one then compiles every homelab
    module it imports, which an installed copy does not (compare numbers with the same setting)."""
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "; PYTHONDONTWRITEBYTECODE is set: each run compiled homelab's modules from source"
    return ""


def _edit_profile(recipe_file: Path) -> str:
    """Change one profile parameter of a recipe (what a user tuning sampling does)."""
    data = yaml.safe_load(recipe_file.read_text())
    profiles = data.setdefault("profiles", {})
    if profiles:
        name = next(iter(profiles))
        params = profiles[name] or {}
        params["temperature"] = round(float(params.get("temperature", 0.7)) + 0.01, 3)
        profiles[name] = params
        what = f"profile {name}: temperature -> {params['temperature']}"
    else:
        profiles["bench"] = {"temperature": 0.5}
        what = "added profile bench"
    recipe_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return what


def cmd_bench_deploy(args: argparse.Namespace) -> int:
    extra = [f"service={args.service}"] if args.service else []
    elapsed, code, out = _timed_deploy(args.host, extra)
    print(f"warm-up deploy: {elapsed:.2f} s (exit {code})")
    if code != 0:
        print(out[-2000:])
        return code
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(args.n):
        elapsed, code, out = _timed_deploy(args.host, extra, cpu)
        if code != 0:
            print(out[-2000:])
            return code
        times.append(elapsed)
    loadavg = os.getloadavg()[0]
    print(
        f"no-op `doit deploy host={args.host}`: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)}); "
        f"CPU (user+sys) median {statistics.median(cpu):.2f} s; load average {loadavg:.1f} on {os.cpu_count()} CPUs"
        + _bytecode_note()
    )
    if args.no_edit:
        return 0
    host = load(args.host)
    if not host.models or host.models[0].recipe_file is None:
        print("no recipe file to edit: skipping the edit measurement")
        return 0
    recipe_file = host.models[0].recipe_file
    original = recipe_file.read_bytes()
    backup = recipe_file.with_name(f".{recipe_file.name}.bench-backup")
    shutil.copyfile(recipe_file, backup)
    try:
        what = _edit_profile(recipe_file)
        elapsed, code, out = _timed_deploy(args.host, extra)
        action = next((line for line in out.splitlines() if " -> " in line and "generation" in line), "")
        print(f"after one recipe edit ({recipe_file.name}, {what}): {elapsed:.2f} s (exit {code}) {action}")
    finally:
        recipe_file.write_bytes(original)
        backup.unlink(missing_ok=True)
    elapsed, code, _ = _timed_deploy(args.host, extra)
    print(f"restored {recipe_file.name} and redeployed: {elapsed:.2f} s (exit {code})")
    return 0


def register(cli) -> None:  # noqa: ANN001 - homelab.cli.CLI
    p = cli.benchmark(
        "deploy", cmd_bench_deploy, "time a no-op `doit deploy` (median of N) and one after a recipe edit"
    )
    p.add_argument("--host", default="local")
    p.add_argument("-n", type=int, default=5, help="no-op runs to take the median of")
    p.add_argument("--service", choices=["user", "system", "none", "auto"])
    p.add_argument("--no-edit", action="store_true", help="only the no-op measurement")
