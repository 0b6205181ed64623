"""``runtime.verify``: how much a deploy checks after activation, from the host file through
Target.from_host to the install (a real detached fake service answering on loopback)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from deploy_helpers import free_port, render_files, write_inventory

from homelab.deploy.generations import GenerationStore
from homelab.deploy.installer import Deployer, DeployFailed, Options, Target
from homelab.deploy.verify import LEVELS
from homelab.errors import HomelabError
from homelab.inventory import load_host
from homelab.inventory.schema import Runtime


def _target(tmp_path: Path, verify: str | None) -> Target:
    listen = f"127.0.0.1:{free_port()}"
    inv = write_inventory(tmp_path / "inv", "box", "local", listen)
    if verify is not None:
        host_file = inv / "hosts" / "box.yaml"
        host_file.write_text(host_file.read_text().replace("  service: none\n", f"  service: none\n  verify: {verify}\n"))
    return Target.from_host(load_host("box", inv))


def test_the_schema_offers_exactly_the_levels_verify_knows() -> None:
    annotation = Runtime.model_fields["verify"].annotation
    assert typing.get_args(annotation) == LEVELS
    assert Runtime().verify == "completion"


@pytest.mark.parametrize(
    ("configured", "override", "steps"),
    [
        (None, None, ["health", "models", "completion with tiny"]),  # the default: completion
        ("health", None, ["health"]),
        ("models", None, ["health", "models"]),
        ("health", "completion", ["health", "models", "completion with tiny"]),  # verify= wins
    ],
)
def test_runtime_verify_sets_what_the_deploy_checks(
    tmp_path: Path, write_rendered, events: Path, configured: str | None, override: str | None, steps: list[str]
) -> None:
    target = _target(tmp_path, configured)
    assert target.verify == (configured or "completion")
    deployer = Deployer(target, Options(quiet=True, verify=override))
    try:
        report = deployer.install(write_rendered(render_files("box", target.listen, {"tiny": "-c 512"})))
        kinds = [
            "health" if "/health" in s else "models" if "/v1/models" in s else s.removesuffix(": ok")
            for s in report.verify_steps
        ]
        assert kinds == steps
    finally:
        deployer.stop()


def test_a_broken_model_passes_health_but_fails_completion(tmp_path: Path, write_rendered, events: Path) -> None:
    """What the levels are for: only a completion loads the model and sees the bad flag."""
    target = _target(tmp_path, "health")
    broken = {"tiny": "--no-such-flag"}
    deployer = Deployer(target, Options(quiet=True))
    try:
        assert deployer.install(write_rendered(render_files("box", target.listen, broken))).generation == 1
    finally:
        deployer.stop()
    GenerationStore(deployer.paths).unset_current()
    strict = Deployer(target, Options(quiet=True, verify="completion"))
    with pytest.raises(DeployFailed, match="completion with 'tiny'"):
        strict.install(write_rendered(render_files("box", target.listen, broken, recipes="r2")))
    assert not strict.service.alive()


def test_an_unknown_level_is_refused_with_the_choices() -> None:
    with pytest.raises(HomelabError, match="verify='quick': use one of health, models, completion"):
        Options(verify="quick")
