"""``homelab bench build-check``: what every ``doit build`` runs on a host whose build is current."""

from __future__ import annotations

import argparse
import time

from ..inventory import load_host
from ..llamacpp.patches import precheck_series
from ..llamacpp.stage import builder, plan_build
from ..settings import inventory_dir


def cmd_bench_build_check(args: argparse.Namespace) -> int:
    """Time what runs on every `doit build`: the build-key check and the patch pre-check."""
    host = load_host(args.host, inventory_dir(args.inventory))
    planned = plan_build(host)  # first call pays the imports and any fetch
    timings = []
    for _ in range(args.runs):
        started = time.perf_counter()
        planned = plan_build(host)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    request = planned.request
    precheck_series(planned.git_dir, request.patches, base_commit=request.commit, base_label=request.label)
    check = time.perf_counter() - started
    timings.sort()
    print(
        f"build key check: median {timings[len(timings) // 2] * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms ({args.runs} runs)"
    )
    print(f"patch pre-check: {check * 1000:.1f} ms for {len(request.patches)} patch(es)")
    print(f"installed: {'yes' if builder().installed(planned.key) else 'no'} (key {planned.key[:12]})")
    return 0


def register(cli) -> None:  # noqa: ANN001 - homelab.cli.CLI
    parser = cli.benchmark(
        "build-check", cmd_bench_build_check, "time the build-key check and the patch pre-check of a host"
    )
    parser.add_argument("host")
    parser.add_argument("--inventory")
    parser.add_argument("--runs", type=int, default=20)
