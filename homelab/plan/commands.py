"""``homelab plan HOST``."""

from __future__ import annotations

import argparse
import json

from ..inventory import load_host
from ..settings import inventory_dir
from .host import PlanError
from .report import render_plan
from .stage import find_fit_params, make_plan, ours_mib, run_oracle, write_plan


def register(cli) -> None:  # cli: homelab.cli.CLI (the CLI imports this module lazily)
    p = cli.command(
        "plan",
        plan_command,
        "prove every model and resident set of a host fits its VRAM budget; choose ctx-size: auto",
    )
    p.add_argument("host", metavar="HOST")
    p.add_argument("--json", action="store_true", help="print the plan JSON (the contract file's content)")
    p.add_argument(
        "--oracle",
        action="store_true",
        help="also run llama.cpp's llama-fit-params with each fetched model's flags and show its numbers",
    )
    p.add_argument(
        "--fit-params",
        metavar="PATH",
        help="the llama-fit-params binary (default: next to the host's built llama-server)",
    )
    p.add_argument(
        "--inventory", metavar="DIR", help="inventory directory (default: $HOMELAB_INVENTORY or the checkout)"
    )


def plan_command(args: argparse.Namespace) -> int:
    host = load_host(args.host, inventory_dir(args.inventory))
    plan, inputs = make_plan(host)
    oracle = None
    if args.oracle:
        fit_bin = find_fit_params(host, args.fit_params)
        if fit_bin is None:
            raise PlanError(
                f"no llama-fit-params for host {host.name}: add llama-fit-params to llama_cpp.targets in "
                f"{host.host_file} and run `doit build host={host.name}`, or pass --fit-params PATH"
            )
        oracle = run_oracle(fit_bin, plan, inputs)
    path = write_plan(plan, oracle.as_json() if oracle else None)
    if args.json:
        data = json.loads(path.read_text())
        print(json.dumps(data, indent=2))
    else:
        if oracle:
            merged = {m: {d: v for d, v in per.items()} for m, per in oracle.per_model.items()}
            print(render_plan(plan, merged))
            print("\nllama-fit-params (MiB: model + context + compute) vs ours (same terms):")
            for mid, per in oracle.per_model.items():
                ours = ours_mib(plan, mid)
                for dev, theirs in per.items():
                    mine = ours.get(dev, 0)
                    err = (mine - theirs) / theirs * 100 if theirs else 0.0
                    print(f"  {mid} {dev}: ours {mine:,}  llama.cpp {theirs:,}  ({err:+.1f}%)")
            for problem in oracle.problems:
                print(f"  oracle: {problem}")
        else:
            print(render_plan(plan))
        print(f"\nwritten: {path}")
    return 0 if plan.fits else 1
