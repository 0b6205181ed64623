"""Draft models in the render: --spec-draft-model from the lock, the speculative type b11434
needs to draft with it, the manifest's pins, and the real llama-server drafting with it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from homelab.cli import main as homelab_main
from homelab.hub.resolve import resolve_model
from homelab.inventory import load_host
from homelab.llamacpp.build import read_flags
from homelab.lock import Lock, write_lock
from homelab.render import render_host
from homelab.render.errors import RenderError
from homelab.render.generation import read_generation, staging_dir
from homelab.supervisor.config_load import load_config

from .conftest import example_host, fake_inputs
from .test_e2e import free_port, post, running, wait_healthy

SERVER = "{ctx-size: 256, batch-size: 64, ubatch-size: 64, parallel: 1, threads: 2, jinja: true}"


def draft_inventory(root: Path, main: Path, draft: Path, server: str = SERVER, entry: str = "") -> Path:
    (root / "recipes").mkdir(parents=True)
    (root / "hosts").mkdir()
    (root / "recipes" / "tiny.yaml").write_text(
        f"name: tiny\nsource: {{path: {{path: {main}}}}}\ndraft: {{path: {{path: {draft}}}}}\nserver: {server}\n"
    )
    (root / "hosts" / "box.yaml").write_text(
        "name: box\nbackend: cpu\n"
        f"runtime: {{kind: supervisor, listen: '127.0.0.1:{free_port()}', service: none}}\n"
        f"models:\n  - {{recipe: tiny, port: {free_port()}{entry}}}\n"
    )
    host = load_host("box", root)
    pins = {m.id: resolve_model(m.source, root, lambda: None, m.draft) for m in host.models}  # type: ignore[arg-type,return-value]  # path sources ask no Hub
    write_lock(host.lock_file, Lock(host="box", models=pins))
    return root


def test_example_draft_renders_with_its_fetched_path_and_draft_simple() -> None:
    host = example_host("duo3060")
    inputs = fake_inputs(host)
    cmd = load_config_text(render_host(inputs)["config.yaml"])["chat-small"]
    draft = str(inputs.draft["chat-small"])
    assert cmd[cmd.index("--spec-draft-model") + 1] == draft
    assert cmd[cmd.index("--spec-type") + 1] == "draft-simple"
    assert cmd[cmd.index("--spec-draft-n-max") + 1] == "8"
    # models without a draft get neither flag
    assert "--spec-draft-model" not in load_config_text(render_host(inputs)["config.yaml"])["think-big"]


def test_a_spec_type_the_recipe_sets_is_kept() -> None:
    host = example_host("duo3060")
    model = dataclasses.replace(host.models[0], server={**host.models[0].server, "spec-type": "draft-simple,ngram-mod"})
    inputs = fake_inputs(dataclasses.replace(host, models=(model, *host.models[1:])))
    cmd = load_config_text(render_host(inputs)["config.yaml"])[model.id]
    assert cmd[cmd.index("--spec-type") + 1] == "draft-simple,ngram-mod" and cmd.count("--spec-type") == 1


def test_an_mtp_head_file_runs_as_draft_mtp() -> None:
    """``mtp:`` with a ``draft:``: the draft is a separate MTP head file, drafted with draft-mtp."""
    from homelab.inventory.schema import Draft

    host = example_host("xtx")
    head = Draft.model_validate({"path": {"path": "/models/mtp-heads.gguf"}})
    models = tuple(dataclasses.replace(m, draft=head) if m.mtp is not None else m for m in host.models)
    mid = next(m.id for m in models if m.mtp is not None)
    inputs = fake_inputs(dataclasses.replace(host, models=models), draft={mid: Path("/models/mtp-heads.gguf")})
    cmd = load_config_text(render_host(inputs)["config.yaml"])[mid]
    assert cmd[cmd.index("--spec-draft-model") + 1] == "/models/mtp-heads.gguf"
    assert cmd[cmd.index("--spec-type") + 1] == "draft-mtp" and cmd.count("--spec-type") == 1


def test_a_draft_not_fetched_says_what_to_run() -> None:
    host = example_host("duo3060")
    with pytest.raises(RenderError, match=r"no fetched draft model for model 'chat-small'.*doit fetch host=duo3060"):
        render_host(fake_inputs(host, draft={}))


def load_config_text(text: str) -> dict[str, list[str]]:
    """Each model's command line (llama-swap's cmd, ${llama-server} and ${common} expanded)."""
    import yaml

    data = yaml.safe_load(text)
    out = {}
    for model_id, entry in data["models"].items():
        words: list[str] = []
        for line in entry["cmd"].splitlines():
            words += line.split()
        out[model_id] = words
    return out


def test_render_end_to_end_takes_the_draft_from_the_lock_and_records_its_hash(
    tmp_path: Path, tiny_models: dict[str, Path], llama_server_bin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = draft_inventory(tmp_path / "inventory", tiny_models["alpha"], tiny_models["beta"])
    assert homelab_main(["render", "box", "--inventory", str(inv), "--server", str(llama_server_bin)]) == 0, (
        capsys.readouterr().err
    )
    staged = read_generation(staging_dir("box"))
    assert staged is not None
    assert f"--spec-draft-model {tiny_models['beta']}" in staged["config.yaml"]
    manifest = json.loads(staged["manifest.json"])
    [main, draft] = manifest["models"]["tiny"]
    assert (main["role"], main["sha256"]) == ("model", hashlib.sha256(tiny_models["alpha"].read_bytes()).hexdigest())
    assert (draft["role"], draft["sha256"]) == ("draft", hashlib.sha256(tiny_models["beta"].read_bytes()).hexdigest())
    assert manifest["llama_cpp"]["backend"] == "cpu"
    # the supervisor's prefetch reads the draft ahead of a swap as it reads the model
    from homelab.supervisor.prefetch import model_files

    config = staging_dir("box") / "config.yaml"
    cmd = load_config(config, env={}).models["tiny"].cmd
    assert model_files(cmd) == [tiny_models["alpha"], tiny_models["beta"]]


@pytest.mark.e2e
@pytest.mark.parametrize("with_type", [True, False], ids=["as-rendered", "without-spec-type"])
def test_the_real_llama_server_drafts_with_the_rendered_draft(
    tmp_path: Path, tiny_models: dict[str, Path], llama_server_bin: Path, with_type: bool
) -> None:
    """b11434 with the rendered --spec-draft-model and --spec-type draft-simple drafts (its
    timings count drafted tokens); the same command without --spec-type loads the draft and never
    drafts with it, which is why the render adds the type."""
    inv = draft_inventory(tmp_path / "inventory", tiny_models["alpha"], tiny_models["alpha"])
    host = load_host("box", inv)
    accepted = read_flags(llama_server_bin, "the test build")
    inputs = fake_inputs(
        host, server_binary=llama_server_bin, accepted_flags=accepted, model_files={"tiny": (tiny_models["alpha"],)},
        draft={"tiny": tiny_models["alpha"]}, plan=None, mtp_supported={}, peers=(), rpc_workers={},
    )  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(render_host(inputs)["config.yaml"])
    model = load_config(config, env={}).models["tiny"]
    cmd = list(model.cmd)
    assert cmd[cmd.index("--spec-type") + 1] == "draft-simple"
    if not with_type:
        at = cmd.index("--spec-type")
        del cmd[at : at + 2]
    log = tmp_path / "tiny.log"
    with running(cmd, {**os.environ, **model.env}, log) as proc:
        wait_healthy(f"{model.proxy}/health", proc, log)
        status, body = post(
            f"{model.proxy}/v1/completions",
            {"prompt": "abcabcabcabcabcabc", "max_tokens": 24, "temperature": 0, "ignore_eos": True},
        )
    text = log.read_text()
    assert status == 200, f"{body}\n{text[-3000:]}"
    assert "loading draft model" in text  # loaded either way
    drafted = body.get("timings", {}).get("draft_n", 0)
    if with_type:
        assert drafted > 0, f"no drafted tokens: {body.get('timings')}\n{text[-2000:]}"
        # the draft is the model itself here: greedy drafts are all accepted
        assert body["timings"]["draft_n_accepted"] == drafted
    else:
        assert drafted == 0, body.get("timings")


def test_manifest_records_the_llama_cpp_pin_and_every_pinned_file() -> None:
    """#16: the generation says which llama.cpp (ref, commit, backend, patches) and which bytes of
    every model it serves; a re-pin shows in the deploy's list of changed inputs."""
    from homelab.deploy.changes import compare
    from homelab.lock import LlamaCppPin, PinnedFile, PinnedModel, PinnedPatch
    from homelab.render.assemble import llama_cpp_facts, model_pins

    host = example_host("duo3060")
    pin = LlamaCppPin(repo="https://github.com/ggml-org/llama.cpp", ref="b11434", commit="ab" * 20,
                      build_number=11434, patches=[PinnedPatch(ref="patches/fix.patch", sha256="cd" * 32)])  # fmt: skip

    def lock(draft_sha: str) -> Lock:
        files = {
            m.id: PinnedModel(request="r", files=[
                PinnedFile(source="hf", repo="org/m-GGUF", revision="1" * 40, path=f"{m.id}.gguf", size=1, sha256="2" * 64),
                *([PinnedFile(role="draft", source="hf", repo="org/d-GGUF", revision="3" * 40, path="d.gguf", size=1,
                              sha256=draft_sha)] if m.draft else []),
            ])
            for m in host.models
        }  # fmt: skip
        return Lock(host=host.name, llama_cpp=pin, models=files)

    def manifest(lk: Lock) -> bytes:
        inputs = fake_inputs(host, llama_cpp=llama_cpp_facts(lk), model_pins=model_pins(host, lk))
        return render_host(inputs)["manifest.json"].encode()

    before = json.loads(manifest(lock("4" * 64)))
    assert before["llama_cpp"] == {
        "backend": "cuda", "build_number": 11434, "commit": "ab" * 20, "ref": "b11434", "source": "git",
        "repo": "https://github.com/ggml-org/llama.cpp", "patches": [{"ref": "patches/fix.patch", "sha256": "cd" * 32}],
    }  # fmt: skip
    assert [(f["role"], f["sha256"]) for f in before["models"]["chat-small"]] == [("model", "2" * 64), ("draft", "4" * 64)]
    changes = compare({"manifest.json": manifest(lock("4" * 64))}, {"manifest.json": manifest(lock("5" * 64))})
    assert changes.inputs == ["models.chat-small"] and "input models.chat-small" in changes.summary()
