"""End to end, for real: `doit deploy` of a local-style host with `service: none`.

The whole chain runs as users run it (a `doit` subprocess): lock and fetch against the fake Hub,
source/build (the llama.cpp build of the `llama_server_bin` fixture, found by its build key, so
nothing is compiled here), plan, render, install, the real `homelab serve` supervisor with the
real llama-server and tiny models, then a completion through the supervisor. A profile edit
redeploys as a reload that restarts only the edited model; a broken flag fails verification,
rolls back, and the endpoint keeps answering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_helpers import free_port
from homelab.address import free_port_below_ephemeral
from homelab.render.ports import WINDOW
from processes import argv, descendants

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _require_stages() -> None:
    for module in ("homelab.render", "homelab.supervisor.app", "homelab.hub.fetch", "homelab.llamacpp.stage"):
        try:
            __import__(module)
        except ImportError as exc:
            pytest.skip(f"{module} is not there yet ({exc}): the e2e deploy needs every stage")


def _llama_pids(file_name: str) -> set[int]:
    """The llama-server processes of this test's deployed supervisor (the pid in its state's
    service.pid, and the processes below it) whose model file is named ``file_name``: other test
    runs on this machine serve the same file names from the same binary."""
    pid_file = Path(os.environ["HOMELAB_STATE"]) / "hosts" / "lab" / "service.pid"
    try:
        supervisor = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return set()
    pids = set()
    for pid in descendants(supervisor):
        args = argv(pid)
        if args and args[0].endswith(b"llama-server") and any(a.endswith(b"/" + file_name.encode()) for a in args):
            pids.add(pid)
    return pids


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


@pytest.fixture
def lab(tmp_path: Path, llama_server_bin: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    _require_stages()
    from fakehub import FakeHub

    from homelab.inventory import load_host
    from homelab.testing import llama_server as testing

    build_root = llama_server_bin.parent.parent
    repo, _commit = testing.source_repo(testing.cache_dir())
    inv = tmp_path / "inventory"
    for d in ("hosts", "recipes", "patches"):
        (inv / d).mkdir(parents=True)
    for patch in testing.test_patches():
        shutil.copyfile(patch.path, inv / "patches" / patch.path.name)
    listen = f"127.0.0.1:{free_port()}"
    with FakeHub() as hub:
        for name in ("alpha", "beta"):
            hub.add_repo(f"test/{name}-GGUF", {f"{name}.gguf": tiny_models[name]})
            recipe = {
                "name": name,
                "source": {"hf": {"repo": f"test/{name}-GGUF", "file": f"{name}.gguf"}},
                "server": {"ctx-size": 256},
                "profiles": {"chat": {"temperature": 0.7}},
            }
            (inv / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        host = {
            "name": "lab",
            "backend": "cpu",
            "ram_mib": 4096,
            "llama_cpp": {
                "repo": str(repo),
                "ref": testing.TAG,
                "patches": [p.path.name for p in testing.test_patches()],
                "targets": list(testing.TARGETS),
            },
            # below the ephemeral range: a backend's port (start_port + its slot) is bound later,
            # while connections are opened (an RPC client's was once given it, in CI)
            "runtime": {"listen": listen, "service": "none", "start_port": free_port_below_ephemeral(room=WINDOW)},
            "models": [{"recipe": "alpha", "preload": True}, {"recipe": "beta", "preload": True}],
            "sets": {"both": "alpha & beta"},
        }
        (inv / "hosts" / "lab.yaml").write_text(yaml.safe_dump(host, sort_keys=False))
        # run homelab from a snapshot of the source: the render stage hashes homelab's own code
        # into every generation (new code = restart), and this tree may be edited meanwhile
        src = tmp_path / "src"
        shutil.copytree(REPO / "homelab", src / "homelab", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md", "dodo.py"):
            shutil.copyfile(REPO / name, src / name)
        # a first deploy resolves the lock; CI=true would make it frozen (an error by design)
        monkeypatch.delenv("CI", raising=False)
        env = {
            **{k: v for k, v in os.environ.items() if k != "CI"},
            "HOMELAB_INVENTORY": str(inv),
            "HF_ENDPOINT": hub.endpoint,
            "PYTHONPATH": str(src),
        }
        monkeypatch.setenv("HOMELAB_INVENTORY", str(inv))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        # seed this state's build cache with the fixture's build when the keys agree
        from homelab.llamacpp.stage import plan_build

        key = plan_build(load_host("lab", inv)).key
        if (build_root / "build.json").is_file() and key != build_root.name:
            pytest.skip(f"the lab host's build key {key[:12]} differs from the fixture build "
                        f"{build_root.name[:12]}: the test would compile llama.cpp")

        def seed(state: Path) -> None:
            builds = state / "builds"
            builds.mkdir(parents=True, exist_ok=True)
            if (build_root / "build.json").is_file():
                (builds / key).symlink_to(build_root)
            else:
                _seed_build(builds / key, key, llama_server_bin)

        seed(Path(os.environ["HOMELAB_STATE"]))
        yield {"inv": inv, "env": env, "listen": listen, "models": tiny_models, "seed": seed, "src": src, "hub": hub}
        subprocess.run([sys.executable, "-m", "homelab.cli", "stop", "lab"], env=env, cwd=src,
                       capture_output=True, timeout=60)


def _seed_build(root: Path, key: str, server: Path) -> None:
    """Install a prebuilt llama-server (HOMELAB_TEST_LLAMA_SERVER) under the build key the host
    asks for, laid out as the build stage installs builds, so the chain finds it built."""
    from homelab.llamacpp.build import read_flags
    from homelab.testing.llama_server import BUILD_NUMBER, TAG

    (root / "bin").mkdir(parents=True)
    for tool in server.parent.iterdir():
        if tool.name.startswith("llama-") or ".so" in tool.name:
            (root / "bin" / tool.name).symlink_to(tool)
    read_flags(root / "bin" / "llama-server", TAG).write(root / "flags.json")
    manifest = {"key": key, "label": TAG, "build_number": BUILD_NUMBER, "backend": "cpu", "seeded_from": str(server)}
    (root / "build.json").write_text(json.dumps(manifest, indent=1) + "\n")


def deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    src = env["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", f"{src}/dodo.py", "deploy", "host=lab"],
        env=env, cwd=src, capture_output=True, text=True, timeout=600,
    )


def test_deploy_serves_reloads_and_rolls_back(lab) -> None:
    env, url = lab["env"], f"http://{lab['listen']}"
    first = deploy(env)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "lab: generation 1 active (start, service: none" in out
    status, body = _post(f"{url}/v1/chat/completions",
                         {"model": "alpha:chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] is not None

    # nothing changed: nothing re-locked, rebuilt, downloaded or restarted, no new generation
    pid_file = Path(os.environ["HOMELAB_STATE"]) / "hosts" / "lab" / "service.pid"
    supervisor, backends = pid_file.read_text(), (_llama_pids("alpha.gguf"), _llama_pids("beta.gguf"))
    lab["hub"].clear_requests()
    started = time.monotonic()
    noop = deploy(env)
    noop_s = time.monotonic() - started
    assert noop.returncode == 0, noop.stdout[-3000:] + noop.stderr[-2000:]
    assert "lab: up to date (generation 1), nothing restarted" in noop.stdout
    for task in ("lock", "fetch:lab:alpha", "fetch:lab:beta", "source", "build", "plan", "render", "install"):
        name = task if ":" in task else f"{task}:lab"
        assert f"-- {name}\n" in noop.stdout, noop.stdout  # doit's "up to date, skipped"
    assert lab["hub"].requests == []
    assert pid_file.read_text() == supervisor and backends[0]
    assert (_llama_pids("alpha.gguf"), _llama_pids("beta.gguf")) == backends
    print(f"no-op deploy: {noop_s:.2f} s")

    # a profile edit: reload, generation 2, beta's llama-server keeps running
    beta_before = _llama_pids("beta.gguf")
    recipe = lab["inv"] / "recipes" / "alpha.yaml"
    data = yaml.safe_load(recipe.read_text())
    data["profiles"]["chat"]["temperature"] = 0.2
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    second = deploy(env)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "generation 2" in out and "-> reload" in out
    assert "Building" not in out and "compil" not in out.lower()
    assert beta_before and _llama_pids("beta.gguf") == beta_before

    # a broken flag: verification fails, rollback to 2, the endpoint still answers
    data["server"]["lora"] = "/nonexistent/adapter.gguf"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    third = deploy(env)
    out = third.stdout + third.stderr
    assert third.returncode != 0
    assert "rolled back to generation 2" in out, out[-4000:]
    listing = subprocess.run([sys.executable, "-m", "homelab.cli", "generations", "lab"], env=env, cwd=lab["src"],
                             capture_output=True, text=True)
    assert "*    2" in listing.stdout and "failed" in listing.stdout
    status, body = _post(f"{url}/v1/chat/completions",
                         {"model": "beta:chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200, body

    # an explicit rollback from another process: generation 1 differs from 2 only in config.yaml
    back = subprocess.run([sys.executable, "-m", "homelab.cli", "rollback", "lab", "1"], env=env, cwd=lab["src"],
                          capture_output=True, text=True, timeout=300)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "switching to generation 1 -> reload" in back.stdout
    assert _llama_pids("beta.gguf") == beta_before
    status = subprocess.run([sys.executable, "-m", "homelab.cli", "status", "lab"], env=env, cwd=lab["src"],
                            capture_output=True, text=True, timeout=60)
    assert "running, pid" in status.stdout and "current generation: 1" in status.stdout


def test_bench_deploy_prints_noop_and_edit_times(lab) -> None:
    env = lab["env"]
    bench = subprocess.run(
        [sys.executable, "-m", "homelab.cli", "bench", "deploy", "--host", "lab", "-n", "3"],
        env=env, cwd=lab["src"], capture_output=True, text=True, timeout=600,
    )
    print(bench.stdout)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    assert "no-op `doit deploy host=lab`: median" in bench.stdout
    assert "after one recipe edit (alpha.yaml, profile chat: temperature -> 0.71)" in bench.stdout
    assert "-> reload" in bench.stdout
    assert "restored alpha.yaml and redeployed" in bench.stdout
    assert "temperature: 0.7\n" in (lab["inv"] / "recipes" / "alpha.yaml").read_text()


def test_remote_host_runs_the_chain_over_ssh(sshd: str, lab, tmp_path: Path) -> None:
    """The same host, addressed over ssh (the test's own sshd): sync, chain on the remote side
    (its own state, HF cache and build), output streamed back, lockfile fetched back."""
    env = lab["env"]
    host_file = lab["inv"] / "hosts" / "lab.yaml"
    host = yaml.safe_load(host_file.read_text())
    host["address"] = sshd
    host_file.write_text(yaml.safe_dump(host, sort_keys=False))
    remote_state = tmp_path / "remote-state"
    lab["seed"](remote_state)
    env.update(
        HOMELAB_REMOTE_DIR=str(tmp_path / "remote"),
        HOMELAB_REMOTE_STATE=str(remote_state),
        HOMELAB_REMOTE_PYTHON=sys.executable,
        HOMELAB_REMOTE_ENV=f"HF_HOME={tmp_path / 'remote-hf'}",
        HOMELAB_SSH=os.environ["HOMELAB_SSH"],
    )
    assert not (lab["inv"] / "hosts" / "lab.lock.json").exists()
    first = deploy(env)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "synced homelab source and inventory" in out
    assert "lab: generation 1 active (start, service: none" in out  # streamed from the remote
    assert f"updated {lab['inv'] / 'hosts' / 'lab.lock.json'}" in out
    assert (remote_state / "hosts" / "lab" / "current" / "config.yaml").is_file()
    assert not (Path(os.environ["HOMELAB_STATE"]) / "hosts" / "lab" / "generations").exists()
    status, body = _post(f"http://{lab['listen']}/v1/chat/completions",
                         {"model": "beta:chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200, body
    again = deploy(env)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "lab: up to date (generation 1)" in again.stdout, again.stdout
    assert "updated" not in again.stdout


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def test_deploy_all_starts_the_rpc_worker_first_and_leaves_it_running(lab) -> None:
    """A worker host with only ``rpc_server:`` (the real rpc-server, its own unit) and the lab
    host putting alpha's layers on it: ``host=all`` deploys the worker in the first wave, the
    head in the second; the completion goes through the worker; a second run touches nothing."""
    env, inv = lab["env"], lab["inv"]
    host_file = inv / "hosts" / "lab.yaml"
    head = yaml.safe_load(host_file.read_text())
    head["models"][0]["rpc"] = ["w"]
    host_file.write_text(yaml.safe_dump(head, sort_keys=False))
    rpc_listen = f"127.0.0.1:{free_port()}"
    worker = {
        "name": "w",
        "backend": "cpu",
        "ram_mib": 2048,
        "llama_cpp": head["llama_cpp"],
        "rpc_server": {"listen": rpc_listen, "threads": 1, "cache": False},
        "runtime": {"listen": f"127.0.0.1:{free_port()}", "service": "none"},
    }
    (inv / "hosts" / "w.yaml").write_text(yaml.safe_dump(worker, sort_keys=False))
    state = Path(os.environ["HOMELAB_STATE"]) / "hosts"
    src = env["PYTHONPATH"]
    try:
        first = subprocess.run(
            [sys.executable, "-m", "doit", "-f", f"{src}/dodo.py", "deploy", "host=all"],
            env=env, cwd=src, capture_output=True, text=True, timeout=600,
        )
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-5000:]
        assert "deploy order: wave 1: w; wave 2: lab" in out
        assert f"[w  ]   rpc-server on {rpc_listen}: accepts connections" in out
        assert "no endpoint unit (an RPC worker only): HTTP checks skipped" in out
        rpc_pid = int((state / "w" / "homelab-rpc-w.pid").read_text().split()[0])
        argv = _cmdline(rpc_pid)
        assert Path(argv[0]).name == "rpc-server" and argv[1:5] == ["-H", "127.0.0.1", "-p", rpc_listen.split(":")[1]]
        assert not (state / "w" / "service.pid").exists()  # a worker serves no endpoint
        alpha = _llama_pids("alpha.gguf")
        assert alpha and any(f"--rpc={rpc_listen}" in a or a == rpc_listen for p in alpha for a in _cmdline(p))
        status, body = _post(f"http://{lab['listen']}/v1/completions", {"model": "alpha", "prompt": "hi", "max_tokens": 2})
        assert status == 200, body

        again = subprocess.run(
            [sys.executable, "-m", "doit", "-f", f"{src}/dodo.py", "deploy", "host=all"],
            env=env, cwd=src, capture_output=True, text=True, timeout=600,
        )
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        assert "w: up to date (generation 1), nothing restarted" in again.stdout
        assert "lab: up to date (generation 1), nothing restarted" in again.stdout
        assert int((state / "w" / "homelab-rpc-w.pid").read_text().split()[0]) == rpc_pid
        assert _llama_pids("alpha.gguf") == alpha

        status_w = subprocess.run([sys.executable, "-m", "homelab.cli", "status", "w"], env=env, cwd=src,
                                  capture_output=True, text=True, timeout=60)
        assert status_w.returncode == 0 and f"homelab-rpc-w.service: running, pid {rpc_pid}" in status_w.stdout
    finally:
        subprocess.run([sys.executable, "-m", "homelab.cli", "stop", "w"], env=env, cwd=src,
                       capture_output=True, timeout=60)
    assert not (state / "w" / "homelab-rpc-w.pid").exists()


def _request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) without raising on an error status."""
    req = urllib.request.Request(url, body, headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def test_deploy_is_safe_by_default(lab) -> None:
    """#14's probes against what `doit deploy` leaves running with no key: a foreign Host, a
    foreign Origin sending text/plain, and a direct call to a backend's port are refused, while
    curl-style calls, the openai client and an allowed browser origin work."""
    first = deploy(lab["env"])
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    url = f"http://{lab['listen']}"
    chat = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()

    status, _, body = _request(f"{url}/v1/chat/completions", chat, {"Host": "evil.example",
                                                                    "Content-Type": "application/json"})
    assert status == 421 and body["error"]["code"] == "host_not_allowed"
    status, headers, body = _request(f"{url}/v1/chat/completions", chat, {"Origin": "http://evil.example",
                                                                          "Content-Type": "text/plain"})
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert not [h for h in headers if h.lower().startswith("access-control-")]

    running = _request(f"{url}/running")[2]["running"]
    backends = {entry["model"]: entry["proxy"] for entry in running}
    assert set(backends) == {"alpha", "beta"}  # both preloaded
    for proxy in backends.values():
        assert _request(f"{proxy}/v1/chat/completions", chat, {"Content-Type": "application/json"})[0] == 401
        assert _request(f"{proxy}/slots")[0] == 401

    status, _, body = _request(f"{url}/v1/chat/completions", chat, {"Content-Type": "application/json"})
    assert status == 200, body
    status, _, body = _request(f"{url}/upstream/beta/slots")
    assert status == 200 and isinstance(body, list)
    status, headers, _ = _request(f"{url}/v1/chat/completions", chat, {"Origin": "http://localhost:3000",
                                                                       "Content-Type": "application/json"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert answer.choices[0].message is not None
