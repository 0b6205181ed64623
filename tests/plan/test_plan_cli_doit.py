"""`homelab plan HOST` and `doit plan:HOST` on the example inventory, headers from a fake Hub.

No model is downloaded: the plan reads each recipe's GGUF header with Range requests from a real
HTTP server on loopback serving header-only stand-ins of the real models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehub import FakeHub

from homelab.cli import main
from homelab.inventory import load_host

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(example_inventory: Path, standin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        served: set[tuple[str, str]] = set()
        for name in ("xtx", "duo3060"):
            for m in load_host(name, example_inventory).models:
                hf = m.source.hf
                assert hf is not None
                # a draft is the small model of its family: the 0.6B stand-in
                wanted = [(hf, m.recipe.name)] + ([(m.draft.hf, "qwen3-0.6b")] if m.draft and m.draft.hf else [])
                for file, standin in wanted:
                    if (file.repo, file.file) not in served:
                        hub.add_repo(file.repo, {file.file: standin_dir / f"{standin}.gguf"})
                        served.add((file.repo, file.file))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HOMELAB_INVENTORY", str(example_inventory))
        yield hub


def test_homelab_plan_prints_tables_and_writes_the_contract(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "duo3060"]) == 0
    out = capsys.readouterr().out
    assert "gpu0 RTX 3060" in out and "gpu1 RTX 3060" in out and "voice" in out
    state = Path(os.environ["HOMELAB_STATE"])
    data = json.loads((state / "plans" / "duo3060.json").read_text())
    assert data["host"] == "duo3060" and data["fits"] is True
    assert data["models"]["think-big"]["ctx_size"] == 98304
    assert data["models"]["chat-small"]["source"].startswith("hf://unsloth/Qwen3-4B-Instruct-2507-GGUF/")
    # chat-small's draft (hosts/duo3060.yaml) is read from the Hub and counted on its card
    small = data["models"]["chat-small"]
    assert small["devices"]["gpu0"]["draft"] > 600 << 20 and small["terms"]["draft"] == sum(
        d["draft"] for d in small["devices"].values()
    )
    assert any("draft model hf://unsloth/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q8_0.gguf@main" in n for n in small["notes"])
    assert "draft" in out.splitlines()[2] or any(" draft " in line for line in out.splitlines())
    # a second run reads the cached headers: no more requests for files it has seen
    hub.clear_requests()
    assert main(["plan", "duo3060", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"].keys() == data["models"].keys()


def test_homelab_plan_unknown_host_is_one_line(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "nohost"]) == 2
    assert "nohost" in capsys.readouterr().err


def test_oracle_without_fit_params_says_how_to_get_it(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "xtx", "--oracle"]) == 2
    assert "llama-fit-params" in capsys.readouterr().err


def doit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=120,
    )


def test_doit_plan_xtx_and_duo3060(hub: FakeHub) -> None:
    for host in ("xtx", "duo3060"):
        # -s: only the plan task (its lock dependency would ask GitHub for llama.cpp's commit)
        out = doit("run", "-s", f"plan:{host}", f"host={host}")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"VRAM plan for {host}" in out.stdout
        assert "gpu0" in out.stdout and "every model and set fits" in out.stdout
        assert (Path(os.environ["HOMELAB_STATE"]) / "plans" / f"{host}.json").is_file()
    again = doit("run", "-s", "plan:xtx", "host=xtx")
    assert again.returncode == 0 and "-- plan:xtx" in again.stdout  # up to date: not run again


def test_doit_plan_fails_with_the_numbers(hub: FakeHub, example_inventory: Path) -> None:
    host_file = example_inventory / "hosts" / "duo3060.yaml"
    text = host_file.read_text().replace("server: {ctx-size: 4096,", "server: {ctx-size: 16384,")
    assert "ctx-size: 16384" in text
    host_file.write_text(text)
    out = doit("run", "-s", "plan:duo3060", "host=duo3060")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "set 'voice'" in text and "MiB over" in text and "ctx-size:" in text
    assert "Traceback" not in text


def test_report_only_host_leaves_out_unreadable_models(example_inventory: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # the CPU host without ram_mib, offline (nothing listens on the endpoint): a note, not a failure
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HOMELAB_INVENTORY", str(example_inventory))
    assert main(["plan", "local"]) == 0
    assert "qwen3-0.6b left out of the report" in capsys.readouterr().out


def test_budgeted_host_needs_every_header(example_inventory: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HOMELAB_INVENTORY", str(example_inventory))
    assert main(["plan", "xtx"]) == 2
    assert "cannot read the GGUF header" in capsys.readouterr().err


def test_pinned_models_read_the_fetched_file_else_the_hub_header(
    hub: FakeHub, example_inventory: Path, standin_dir: Path
) -> None:
    import hashlib

    from homelab.hub.cache import hf_cache_path
    from homelab.lock import Lock, PinnedFile, PinnedModel, write_lock
    from homelab.plan.stage import make_plan

    host = load_host("duo3060", example_inventory)
    pins: dict[str, PinnedModel] = {}
    for m in host.models:
        hf = m.source.hf
        assert hf is not None
        data = (standin_dir / f"{m.recipe.name}.gguf").read_bytes()
        commit = hub.add_repo(hf.repo, {hf.file: data})
        files = [PinnedFile(source="hf", repo=hf.repo, revision=commit, path=hf.file, size=len(data),
                            sha256=hashlib.sha256(data).hexdigest())]
        if m.draft is not None and m.draft.hf is not None:
            small = (standin_dir / "qwen3-0.6b.gguf").read_bytes()
            draft_commit = hub.add_repo(m.draft.hf.repo, {m.draft.hf.file: small})
            files.append(PinnedFile(role="draft", source="hf", repo=m.draft.hf.repo, revision=draft_commit,
                                    path=m.draft.hf.file, size=len(small), sha256=hashlib.sha256(small).hexdigest()))
        pins[m.id] = PinnedModel(request=f"{hf.repo}/{hf.file}", files=files)
    write_lock(host.lock_file, Lock(host=host.name, models=pins))
    plan, _ = make_plan(host)
    assert plan.models["think-big"].source.startswith("hf://unsloth/Qwen3.6-27B-GGUF/")
    # the pinned draft is read at its pinned commit
    assert any(f"Qwen3-0.6B-Q8_0.gguf@{pins['chat-small'].files[1].revision}" in n
               for n in plan.models["chat-small"].estimate.notes)
    assert "@" + pins["think-big"].files[0].revision in plan.models["think-big"].source
    # once fetched (the file in the HF cache where fetch puts it) the local file is read
    pf = pins["chat-small"].files[0]
    local = hf_cache_path(pf)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes((standin_dir / "qwen3-4b-instruct-2507.gguf").read_bytes())
    hub.clear_requests()
    plan2, _ = make_plan(host)
    assert plan2.models["chat-small"].source == str(local)
    assert plan2.to_json()["models"] == {
        k: {**v, "source": plan2.to_json()["models"][k]["source"]} for k, v in plan.to_json()["models"].items()
    }
