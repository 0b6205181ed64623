"""What the rendered files say for the example hosts, and how render fails."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
import yaml

from homelab.cli import main as homelab_main
from homelab.inventory.schema import GPU
from homelab.llamacpp.flags import AcceptedFlags, parse_help
from homelab.render import RenderError, render_host, write_generation
from homelab.render.assemble import parse_plan, parse_rpc_reserved, write_secrets
from homelab.render.generation import diff_generations, read_generation, staging_dir
from homelab.supervisor.config_load import load_config

from .conftest import example_host, fake_inputs, with_runtime


def config_of(files: dict[str, str]) -> dict:
    return yaml.safe_load(files["config.yaml"])


def cmd_lines(model: dict) -> list[str]:
    return model["cmd"].splitlines()


# ------------------------------------------------------------------ what the seeds must show


def test_duo3060_pins_chat_small_and_splits_think_small() -> None:
    config = config_of(render_host(fake_inputs(example_host("duo3060"))))
    chat, think = config["models"]["chat-small"], config["models"]["think-small"]
    # PCI order: `gpus: [0]` is the card nvidia-smi lists first, not CUDA's fastest-first pick
    assert chat["env"] == ["CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=0"]
    assert think["env"] == ["CUDA_DEVICE_ORDER=PCI_BUS_ID"]  # both cards
    assert "--tensor-split 1,1.5" in cmd_lines(think)
    assert config["routing"]["router"]["use"] == "matrix" and "matrix" not in config  # current form
    matrix = config["routing"]["router"]["settings"]["matrix"]
    assert matrix["vars"] == {"chatsmal": "chat-small", "thinkbig": "think-big", "thinksma": "think-small"}
    assert matrix["sets"] == {"voice": "chatsmal & thinksma", "coding": "thinkbig"}
    assert matrix["evict_costs"] == {"chatsmal": 3, "thinkbig": 18, "thinksma": 18}
    assert think["metadata"]["vram_mib"] == 11900
    # per device, as the supervisor admits them (#17): not one sum over both cards
    assert think["x-devices"] == {"CUDA0": 3960, "CUDA1": 7940}
    assert chat["x-devices"] == {"CUDA0": 3120}
    assert config["x-deviceBudgetMiB"] == {"CUDA0": 11427, "CUDA1": 11427}  # 12288 MiB at vram_budget 0.93
    assert "x-vramBudgetMiB" not in config


def test_xtx_profiles_are_set_params_by_id_and_kv_is_q4_0() -> None:
    config = config_of(render_host(fake_inputs(example_host("xtx"))))
    qwen = config["models"]["qwen3.6-35b-a3b"]
    by_id = qwen["filters"]["setParamsByID"]
    assert sorted(by_id) == [f"qwen3.6-35b-a3b:{p}" for p in ("agent", "chat", "code", "thinking")]
    assert by_id["qwen3.6-35b-a3b:chat"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert qwen["aliases"] == ["qwen3.6"]
    for model_id in ("qwen3.6-27b", "mistral-small-3.2-24b"):
        lines = cmd_lines(config["models"][model_id])
        assert "--cache-type-k q4_0" in lines and "--cache-type-v q4_0" in lines
    mtp = cmd_lines(config["models"]["qwen3.6-35b-a3b-mtp"])
    assert "--spec-type draft-mtp" in mtp and "--spec-draft-n-max 2" in mtp
    # b11434 fits the MTP draft context with the model: no --fit off forced on
    assert not any(line.startswith("--fit") for line in mtp)
    assert not any("spec-type" in line for line in cmd_lines(qwen))
    assert config["x-deviceBudgetMiB"] == {"ROCm0": int(24560 * 0.93)}
    assert qwen["x-devices"] == {"ROCm0": 21504}
    # the AMD card needs no HSA override
    assert all("env" not in m for m in config["models"].values())


def test_rendered_configs_load_in_the_supervisor(tmp_path: Path) -> None:
    for name in ("xtx", "duo3060", "local"):
        host = with_runtime(example_host(name), api_key_env="HOMELAB_API_KEYS")
        files = render_host(fake_inputs(host))
        path = tmp_path / f"{name}.yaml"
        path.write_text(files["config.yaml"])
        config = load_config(path, env={"HOMELAB_API_KEYS": "sk-test"})
        assert config.api_keys == ("sk-test",)
        assert "sk-test" not in files["config.yaml"]
        rendered = config_of(files)["models"]
        assert set(config.models) == {m.id for m in host.models}
        for model_id, model in config.models.items():
            assert model.cmd[0] == "/opt/homelab/bin/llama-server"
            port = rendered[model_id]["metadata"]["port"]
            assert model.cmd[model.cmd.index("--port") + 1] == str(port)
            assert model.cmd[model.cmd.index("--host") + 1] == "127.0.0.1"
            assert model.proxy == f"http://127.0.0.1:{port}"
        for profile_id in (m.profile_ids() for m in host.models):
            for pid in profile_id:
                assert config.resolve(pid) == pid.split(":")[0]
    duo = load_config(tmp_path / "duo3060.yaml", env={"HOMELAB_API_KEYS": "k"})
    assert duo.matrix is not None and duo.matrix.alternatives("voice") == (frozenset({"chat-small", "think-small"}),)
    assert duo.models["think-small"].vram_mib == 11900
    assert duo.models["think-small"].devices_mib == {"CUDA0": 3960, "CUDA1": 7940}
    assert duo.device_budget_mib == {"CUDA0": 11427, "CUDA1": 11427}


def test_prompt_cache_knob_and_folder_reach_the_supervisor(tmp_path: Path) -> None:
    host = example_host("xtx")
    first, *rest = host.models
    host = dataclasses.replace(host, models=(dataclasses.replace(first, prompt_cache=False), *rest))
    files = render_host(fake_inputs(host))
    rendered = config_of(files)
    assert rendered["models"][first.id]["x-promptCache"] is False
    assert all("x-promptCache" not in rendered["models"][m.id] for m in rest)  # the supervisor decides
    path = tmp_path / "config.yaml"
    path.write_text(files["config.yaml"])
    config = load_config(path)
    assert config.models[first.id].prompt_cache is False
    assert config.prompt_cache.dir is not None and config.prompt_cache.dir.name == "prompt-cache"
    assert config.prompt_cache.dir.parent.name == "xtx"  # the host's state folder, not a generation


def test_health_check_timeout_grows_with_size_and_is_capped(inputs_for) -> None:  # noqa: ANN001
    files = render_host(inputs_for("xtx", model_bytes={"qwen3.5-9b": 6 * 1024**3, "glm-4.7-flash": 500 * 1024**3}))
    config = config_of(files)
    assert config["models"]["qwen3.5-9b"]["x-healthCheckTimeout"] == 60 + 6 * 10
    assert config["models"]["glm-4.7-flash"]["x-healthCheckTimeout"] == 900
    assert config["healthCheckTimeout"] == 900


# ------------------------------------------------------------------ ports


def test_ports_do_not_move_when_a_model_is_added() -> None:
    host = example_host("xtx")
    fewer = dataclasses.replace(host, models=tuple(m for m in host.models if m.id != "qwen3.5-9b"))
    before = config_of(render_host(fake_inputs(fewer)))["models"]
    after = config_of(render_host(fake_inputs(host)))["models"]
    for model_id, model in before.items():
        assert after[model_id]["metadata"]["port"] == model["metadata"]["port"]
    ports = [m["metadata"]["port"] for m in after.values()]
    assert len(set(ports)) == len(ports)
    assert all(10001 <= p < 11001 for p in ports)


def test_previous_ports_win_over_home_slots_and_pins_win_over_all() -> None:
    from homelab.render.ports import assign_ports, home_slot

    a_home = 10001 + home_slot("a", 1000)
    # "b" previously took a's home slot: it keeps it, "a" probes to the next free port
    ports = assign_ports(["a", "b"], start_port=10001, pinned={}, previous={"b": a_home})
    assert ports["b"] == a_home
    assert ports["a"] == (a_home + 1 if a_home < 11000 else 10001)
    pinned = assign_ports(["a", "b"], start_port=10001, pinned={"a": 12000}, previous={"a": 10005})
    assert pinned["a"] == 12000
    with pytest.raises(RenderError, match="both use port"):
        assign_ports(["a", "b"], start_port=10001, pinned={"a": 12000, "b": 12000})
    with pytest.raises(RenderError, match="listen port"):
        assign_ports(["a"], start_port=10001, pinned={"a": 12434}, reserved=[12434])


# ------------------------------------------------------------------ GPUs and environment


def test_hsa_override_only_for_gpus_that_need_it() -> None:
    host = example_host("xtx")
    rdna2 = host.host.model_copy(update={"gpus": [GPU(name="RX 6700 XT", vram_mib=12272, arch="gfx1031")]})
    config = config_of(render_host(fake_inputs(dataclasses.replace(host, host=rdna2))))
    assert all("HSA_OVERRIDE_GFX_VERSION=10.3.0" in m["env"] for m in config["models"].values())
    mixed = host.host.model_copy(
        update={"gpus": [GPU(name="RX 7900 XTX", vram_mib=24560, arch="gfx1100"), GPU(name="RX 6600", vram_mib=8176, arch="gfx1032")]}
    )
    with pytest.raises(RenderError, match="different HSA_OVERRIDE_GFX_VERSION"):
        render_host(fake_inputs(dataclasses.replace(host, host=mixed), plan=None))


def test_router_mode_moves_the_hsa_override_into_the_unit_and_names_lost_env() -> None:
    host = with_runtime(example_host("xtx"), kind="router")
    rdna2 = host.host.model_copy(update={"gpus": [GPU(name="RX 6700 XT", vram_mib=12272, arch="gfx1031")]})
    first, *rest = host.models
    first = dataclasses.replace(first, env={"ROCBLAS_LAYER": "0"})
    files = render_host(fake_inputs(dataclasses.replace(host, host=rdna2, models=(first, *rest)), plan=None))
    assert "Environment=HSA_OVERRIDE_GFX_VERSION=10.3.0" in files["units/homelab-xtx.service"].splitlines()
    assert f"[{first.id}]\n; env not applied in router mode: ROCBLAS_LAYER\n" in files["presets.ini"]


# ------------------------------------------------------------------ failures with clear messages


def test_mtp_that_cannot_take_effect_is_refused_with_the_reason() -> None:
    host = example_host("xtx")
    reason = "the pinned llama.cpp builds no MTP graph for architecture 'llama'"
    inputs = fake_inputs(
        host,
        mtp_supported={"qwen3.6-35b-a3b-mtp": False},
        mtp_refused={"qwen3.6-35b-a3b-mtp": reason},
    )
    with pytest.raises(RenderError) as exc:
        render_host(inputs)
    message = str(exc.value)
    assert "model 'qwen3.6-35b-a3b-mtp' sets `mtp:` but MTP cannot take effect" in message
    assert reason in message and "separate MTP head file as the model's `draft:`" in message
    assert str(host.host_file) in message


def test_mtp_on_a_build_without_fit_renders() -> None:
    # the stale --fit off made a build without --fit fail here, blaming the recipe
    accepted = _accepted_without("fit")
    files = render_host(fake_inputs(example_host("xtx"), accepted_flags=accepted))
    assert "--spec-type draft-mtp" in files["config.yaml"] and "--fit" not in files["config.yaml"]



def _accepted_without(*missing: str) -> frozenset[str]:
    from homelab.inventory.flagnames import known_flags

    flags = known_flags("b11434")
    assert flags is not None
    return flags - set(missing)


def test_a_flag_the_binary_does_not_accept_fails_naming_model_recipe_key_and_build() -> None:
    host = example_host("xtx")
    with pytest.raises(RenderError) as info:
        render_host(fake_inputs(host, accepted_flags=_accepted_without("cache-type-k"), build_label="llama.cpp b9999"))
    message = str(info.value)
    assert "cache-type-k" in message and "llama.cpp b9999" in message
    assert "qwen3.6-35b-a3b" in message and "recipes/qwen3.6-35b-a3b.yaml" in message


def test_full_flag_table_checks_values_too() -> None:
    help_text = (
        "-m,    --model FNAME                    model path\n"
        "--host HOST                             ip address to listen\n"
        "--port PORT                             port to listen\n"
        "-c,    --ctx-size N                     size of the prompt context\n"
        "-fa,   --flash-attn [on|off|auto]       flash attention\n"
    )
    accepted = parse_help(help_text, build="b11434 (test)")
    assert isinstance(accepted, AcceptedFlags)
    host = example_host("local")
    assert "--flash-attn on" in render_host(fake_inputs(host, accepted_flags=accepted))["config.yaml"]
    model = host.models[0]
    bad = dataclasses.replace(host, models=(dataclasses.replace(model, server={**model.server, "flash-attn": "maybe"}),))
    with pytest.raises(RenderError, match=r"flash-attn' value 'maybe' is not one of on, off, auto.*recipe qwen3-0.6b"):
        render_host(fake_inputs(bad, accepted_flags=accepted))


def test_duplicate_alias_fails() -> None:
    host = example_host("xtx")
    first, second, *rest = host.models
    clash = dataclasses.replace(second, aliases=("qwen3.6",))
    bad = dataclasses.replace(host, models=(first, clash, *rest))
    with pytest.raises(RenderError, match="duplicate alias 'qwen3.6'"):
        render_host(fake_inputs(bad))


def test_set_naming_an_unknown_model_fails() -> None:
    host = example_host("duo3060")
    bad = dataclasses.replace(host, sets={"voice": "chat-small & think-smal"})
    with pytest.raises(RenderError, match="sets.voice names 'think-smal'.*did you mean 'think-small'"):
        render_host(fake_inputs(bad))


def test_cli_reports_load_time_problems_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through `homelab render`, the inventory loader catches the same mistakes with file:line."""
    import shutil

    repo = Path(__file__).resolve().parents[2]
    inventory = tmp_path / "inv"
    shutil.copytree(repo / "recipes", inventory / "recipes")
    (inventory / "hosts").mkdir()
    text = (repo / "hosts" / "duo3060.yaml").read_text().replace('"chat-small & think-small"', '"chat-small & nobody"')
    (inventory / "hosts" / "duo3060.yaml").write_text(text)
    code = homelab_main(["render", "duo3060", "--inventory", str(inventory)])
    err = capsys.readouterr().err
    assert code == 2
    assert "nobody" in err and "duo3060.yaml" in err and "Traceback" not in err


def test_missing_weights_and_managed_flags_fail_clearly() -> None:
    host = example_host("local")
    with pytest.raises(RenderError, match="doit fetch host=local"):
        render_host(fake_inputs(host, model_files={}))
    model = host.models[0]
    bad = dataclasses.replace(host, models=(dataclasses.replace(model, server={**model.server, "port": 9}),))
    with pytest.raises(RenderError, match="assigns each backend its port"):
        render_host(fake_inputs(bad))


def test_preset_values_llama_cpp_cannot_hold_are_refused() -> None:
    host = example_host("local")
    model = host.models[0]
    bad = dataclasses.replace(host, models=(dataclasses.replace(model, server={**model.server, "chat-template": "a;b"}),))
    with pytest.raises(RenderError, match="';'.*preset format"):
        render_host(fake_inputs(bad))


# ------------------------------------------------------------------ runtimes and units


def test_router_runtime_unit_and_presets() -> None:
    host = with_runtime(example_host("duo3060"), kind="router", api_key_env="HOMELAB_API_KEYS")
    files = render_host(fake_inputs(host))
    unit = files["units/homelab-duo3060.service"]
    assert "ExecStart=/opt/homelab/bin/llama-server --models-preset /var/lib/homelab/hosts/duo3060/current/presets.ini" in unit
    assert "--models-max 2" in unit  # the voice set runs two at once
    # the keys come from a file, never argv (every local user can read a command line); the
    # router needs no secrets.env then, and its children inherit none
    assert "--api-key-file /var/lib/homelab/hosts/duo3060/api-keys" in unit
    assert "--api-key " not in unit and "HOMELAB_API_KEYS" not in unit and "secrets.env" not in unit
    assert "Type=exec" in unit and "ExecReload" not in unit
    assert "device = CUDA0" in files["presets.ini"]


def test_system_unit_hardening_keeps_the_gpu() -> None:
    host = with_runtime(example_host("xtx"), service="system", user="llm")
    unit = render_host(fake_inputs(host))["units/homelab-xtx.service"]
    for line in (
        "Type=notify", "User=llm", "SupplementaryGroups=render video", "PrivateDevices=no",
        "DevicePolicy=closed", "DeviceAllow=char-kfd rw", "DeviceAllow=char-drm rw",
        "ProtectSystem=strict", "ReadWritePaths=-/var/lib/homelab/hosts/xtx", "ProtectHome=yes",
        "OOMPolicy=continue", "KeyringMode=private", "IPAddressDeny=any", "IPAddressAllow=localhost",
        "NoNewPrivileges=yes", "KillMode=mixed", "Restart=on-failure", "StartLimitBurst=5",
        "ExecReload=/bin/kill -HUP $MAINPID", "EnvironmentFile=-/var/lib/homelab/hosts/xtx/secrets.env",
        "WantedBy=multi-user.target",
    ):  # fmt: skip
        assert line in unit.splitlines(), line
    assert "MemoryDenyWriteExecute" not in unit.replace("# No MemoryDenyWriteExecute", "")
    cuda = render_host(fake_inputs(with_runtime(example_host("duo3060"), service="system")))
    assert "DeviceAllow=char-nvidia-uvm rw" in cuda["units/homelab-duo3060.service"]


def test_llama_swap_runtime_needs_its_binary() -> None:
    host = with_runtime(example_host("local"), kind="llama-swap")
    with pytest.raises(RenderError, match="llama-swap binary"):
        render_host(fake_inputs(host))
    unit = render_host(fake_inputs(host, llama_swap_binary=Path("/usr/local/bin/llama-swap")))["units/homelab-local.service"]
    assert "ExecStart=/usr/local/bin/llama-swap --config /var/lib/homelab/hosts/local/current/config.yaml" in unit
    assert "Type=exec" in unit


# ------------------------------------------------------------------ generation directory


def test_write_generation_is_complete_idempotent_and_replaces_stale_files(tmp_path: Path) -> None:
    files = render_host(fake_inputs(example_host("local")))
    target = tmp_path / "staging"
    assert write_generation(files, target) is True
    assert read_generation(target) == files
    assert write_generation(files, target) is False
    (target / "stale.txt").write_text("old")
    assert write_generation(files, target) is True
    assert read_generation(target) == files
    assert not list(tmp_path.glob(".staging*"))


def test_manifest_hashes_inputs_and_outputs() -> None:
    import hashlib
    import json

    files = render_host(fake_inputs(example_host("duo3060")))
    manifest = json.loads(files["manifest.json"])
    assert manifest["inputs"]["build"] == "4" * 64
    for name, text in files.items():
        if name != "manifest.json":
            assert manifest["outputs"][name] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest["ports"]["chat-small"] == config_of(files)["models"]["chat-small"]["metadata"]["port"]


def test_diff_against_installed_generation() -> None:
    old = render_host(fake_inputs(example_host("duo3060")))
    host = example_host("duo3060")
    bigger = dataclasses.replace(
        host, models=tuple(dataclasses.replace(m, ttl=600) if m.id == "chat-small" else m for m in host.models)
    )
    new = render_host(fake_inputs(bigger))
    text = diff_generations(old, new, "current", "rendered")
    assert "+++ rendered/config.yaml" in text and "+    ttl: 600" in text
    assert diff_generations(new, new, "a", "b") == ""


def test_plan_contract_is_parsed() -> None:
    plan = parse_plan(
        {"models": {"m": {"ctx_size": 4096, "vram_mib": {"0": 100, "1": 250}, "vram_mib_total": 350}, "c": {"ctx_size": 8192, "vram_mib": {}}}}
    )
    assert plan["m"].vram_mib == (100, 250) and plan["m"].total == 350 and plan["m"].ctx_size == 4096
    assert plan["c"].vram_mib == () and plan["c"].total is None


def test_a_workers_admission_budget_leaves_room_for_the_heads_rpc_layers(inputs_for) -> None:
    reserved = parse_rpc_reserved(
        {"devices": {"gpu0": {"budget_mib": 22840, "rpc_reserved_mib": 9081, "available_mib": 13759},
                     "cpu": {"budget_mib": 60000}}}
    )
    assert reserved == {0: 9081}
    plain = config_of(render_host(inputs_for("xtx")))
    worker = config_of(render_host(inputs_for("xtx", rpc_reserved_mib=reserved)))
    assert worker["x-deviceBudgetMiB"]["ROCm0"] == plain["x-deviceBudgetMiB"]["ROCm0"] - 9081


def test_secrets_env_is_private(tmp_path: Path) -> None:
    from homelab.render import StatePaths

    host = with_runtime(example_host("local"), api_key_env="HOMELAB_API_KEYS")
    paths = StatePaths(tmp_path, "local")
    assert write_secrets(host, paths, environ={}) is None
    path = write_secrets(host, paths, environ={"HOMELAB_API_KEYS": "sk-a,sk-b"})
    assert path is not None and path.read_text() == "HOMELAB_API_KEYS=sk-a,sk-b\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert staging_dir("local", tmp_path) == tmp_path / "hosts" / "local" / "staging"
