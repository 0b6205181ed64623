"""Building the fake llama-server through the real build stage: keys, atomic install, caching."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from homelab.inventory import load_host
from homelab.llamacpp.build import Builder, BuildError, BuildRequest, parse_progress
from homelab.llamacpp.patches import expand_local
from homelab.llamacpp.source import SourceCache, SourceSpec
from homelab.llamacpp.stage import (
    build_host,
    build_request,
    host_flag_problems,
    host_pin,
    plan_build,
)

from .conftest import write_inventory
from .test_patches import diff_of, replace


def request_for(upstream: Path, state: Path, **kwargs) -> BuildRequest:
    spec = SourceSpec("git", str(upstream), "b100")
    commit = SourceCache(state / "sources").resolve(spec).commit
    kwargs.setdefault("backend", "cpu")
    kwargs.setdefault("host", "box")
    return BuildRequest(source=spec, commit=commit, build_number=100, label="b100", **kwargs)


def test_build_installs_atomically_and_is_a_no_op_when_unchanged(upstream: Path, state: Path) -> None:
    builder = Builder(state)
    request = request_for(upstream, state, targets=("llama-fit-params",))
    build, built = builder.build(request, progress=False)
    assert built
    assert build.root == state / "builds" / build.key
    assert sorted(os.listdir(build.bin_dir)) == ["llama-fit-params", "llama-server"]
    # LLAMA_BUILD_NUMBER / LLAMA_BUILD_COMMIT were injected
    version = subprocess.run([build.server, "--version"], capture_output=True, text=True).stdout
    assert version.strip() == f"version: 100 ({request.commit[:7]})"
    # flags.json is the parsed --help of this binary
    flags = build.flags()
    assert flags.accepts("ctx-size") and not flags.accepts("draft-max") and "b100" in flags.build
    manifest = build.manifest()
    assert manifest["commit"] == request.commit and "-DLLAMA_BUILD_NUMBER=100" in manifest["cmake"]
    assert (build.root / "build.log").read_text().count("$ cmake") == 2
    # nothing half-made is left behind, and the worktree is gone
    assert not [p for p in (state / "builds").iterdir() if p.name.startswith(".tmp")]
    assert not (state / "worktrees" / build.key[:16]).exists()
    assert builder.current("box") == build

    stamp = build.server.stat().st_mtime_ns
    again, built_again = builder.build(request, progress=False)
    assert (again, built_again) == (build, False) and build.server.stat().st_mtime_ns == stamp


def test_a_patch_changes_the_key_and_is_in_the_binary(upstream: Path, state: Path, tmp_path: Path) -> None:
    builder = Builder(state)
    plain, _ = builder.build(request_for(upstream, state), progress=False)
    text = diff_of(upstream, replace("server.c", "--metrics   ", "--homelab-x"))
    (tmp_path / "p.patch").write_text(text)
    patched_request = request_for(upstream, state, patches=tuple(expand_local("p.patch", tmp_path)))
    patched, built = builder.build(patched_request, progress=False)
    assert built and patched.key != plain.key
    assert patched.flags().accepts("homelab-x") and not patched.flags().accepts("metrics")
    assert builder.current("box") == patched
    assert builder.installed(plain.key) == plain  # kept for rollback


def test_earlier_builds_are_pruned_beyond_the_cap(upstream: Path, state: Path) -> None:
    builder = Builder(state, keep=2)
    keys = []
    for variant in ("A", "B", "C"):
        request = request_for(upstream, state, cmake_extra={"HOMELAB_TEST_VARIANT": variant}, host=f"h{variant}")
        keys.append(builder.build(request, progress=False)[0].key)
    # each is some host's current build: none may go yet
    assert all(builder.installed(k) for k in keys)
    newest = builder.installed(keys[2])
    builder.set_current("hA", newest)
    builder.set_current("hB", newest)
    assert builder.prune() == [keys[0]]  # the oldest beyond the cap of two
    assert builder.installed(keys[1]) and builder.installed(keys[2])


def test_a_failing_compile_shows_the_log_tail_and_path(upstream: Path, state: Path, tmp_path: Path) -> None:
    text = diff_of(upstream, replace("fit.c", "return 0;", "return this is not C;"))
    (tmp_path / "broken.patch").write_text(text)
    request = request_for(upstream, state, patches=tuple(expand_local("broken.patch", tmp_path)), targets=("llama-fit-params",))
    with pytest.raises(BuildError) as exc:
        Builder(state).build(request, progress=False)
    message = str(exc.value)
    assert "llama.cpp build failed" in message and "fit.c" in message
    log_path = Path(message.rsplit("full log: ", 1)[1].strip())
    assert log_path.is_file() and "error" in log_path.read_text()
    assert not list((state / "builds").glob("[0-9a-f]" * 8 + "*"))


def test_progress_lines_from_make_and_ninja() -> None:
    assert parse_progress("[ 45%] Building C object ggml/src/ggml.c.o") == (45, 100)
    assert parse_progress("[100%] Built target llama-server") == (100, 100)
    assert parse_progress("[12/345] Building CXX object common/arg.cpp.o") == (12, 345)
    assert parse_progress("-- Configuring done") is None


def test_host_build_key_follows_patches_not_recipes(upstream: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, patches=["p.patch"])
    (inv / "patches" / "p.patch").write_text(diff_of(upstream, replace("fit.c", "return 0", "return 1")))
    key = plan_build(load_host("box", inv)).key

    write_inventory(tmp_path / "inv", upstream, patches=["p.patch"], recipe_server={"ctx-size": 1024, "cache-type-k": "q8_0"})
    assert plan_build(load_host("box", inv)).key == key  # a recipe change (even KV types on CPU)

    (inv / "patches" / "p.patch").write_text(diff_of(upstream, replace("fit.c", "return 0", "return 2")))
    assert plan_build(load_host("box", inv)).key != key  # a patch change


def test_cuda_host_key_follows_the_kv_pairs_recipes_need(upstream: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, backend="cuda", gpus=[{"name": "3090", "vram_mib": 24576, "arch": "86"}])
    host = load_host("box", inv)
    pin, locked = host_pin(host)
    assert not locked and pin.build_number == 100
    request = build_request(host, pin)
    assert request.gpu_archs == ("86",) and request.backend == "cuda"
    b = Builder(Path(os.environ["HOMELAB_STATE"]))
    key = b.plan(request, check_tools=False).key
    write_inventory(tmp_path / "inv", upstream, backend="cuda", gpus=[{"name": "3090", "vram_mib": 24576, "arch": "86"}],
                    recipe_server={"ctx-size": 99, "cache-type-k": "q8_0", "cache-type-v": "q8_0"})
    same = b.plan(build_request(load_host("box", inv), pin), check_tools=False)
    assert same.key == key  # q8_0/q8_0 is compiled by default
    write_inventory(tmp_path / "inv", upstream, backend="cuda", gpus=[{"name": "3090", "vram_mib": 24576, "arch": "86"}],
                    recipe_server={"cache-type-k": "q8_0", "cache-type-v": "q4_0"})
    mixed = b.plan(build_request(load_host("box", inv), pin), check_tools=False)
    assert mixed.key != key and "q8_0-q4_0" in mixed.plan.defines["GGML_CUDA_FA_QUANTS"]


def test_build_host_end_to_end_with_flag_check(upstream: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", upstream, recipe_server={"ctx-size": 2048, "no-mmap": True})
    host = load_host("box", inv)
    build, built = build_host(host, progress=False)
    assert built and build.server.is_file()
    problems = host_flag_problems(host, build.flags())
    assert [p.flag for p in problems] == ["no-mmap"] and "tiny" in str(problems[0])


def test_tarball_and_path_sources_build_like_git(tmp_path: Path) -> None:
    from .fakeproject import make_fake_llama
    from .test_source import _tarball

    tree = make_fake_llama(tmp_path / "tree")
    archive = _tarball(tmp_path / "llama.cpp-b321.tar.gz", tree, "llama.cpp-b321")
    inv = write_inventory(tmp_path / "inv", tmp_path)
    import yaml

    data = yaml.safe_load((inv / "hosts" / "box.yaml").read_text())
    data["llama_cpp"] = {"tarball": f"file://{archive}"}
    (inv / "hosts" / "box.yaml").write_text(yaml.safe_dump(data))
    build, built = build_host(load_host("box", inv), progress=False)
    assert built and build.manifest()["build_number"] == 321
    version = subprocess.run([build.server, "--version"], capture_output=True, text=True).stdout
    assert version.startswith("version: 321 (")

    data["llama_cpp"] = {"path": str(tree), "build_number": 11434}
    (inv / "hosts" / "box.yaml").write_text(yaml.safe_dump(data))
    host = load_host("box", inv)
    first, built = build_host(host, progress=False)
    assert built and build_host(host, progress=False) == (first, False)
    (tree / "fit.c").write_text("int main(void) { return 4; }\n")  # editing the directory rebuilds
    assert build_host(host, progress=False)[0].key != first.key


def test_concurrent_builders_of_one_key_build_once(upstream: Path, state: Path, tmp_path: Path) -> None:
    request_for(upstream, state)  # clone first, so both processes only build
    script = tmp_path / "build_once.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from homelab.llamacpp.build import Builder, BuildRequest\n"
        "from homelab.llamacpp.source import SourceCache, SourceSpec\n"
        "state, upstream = Path(sys.argv[1]), sys.argv[2]\n"
        "spec = SourceSpec('git', upstream, 'b100')\n"
        "commit = SourceCache(state / 'sources').resolve(spec).commit\n"
        "req = BuildRequest(host='box', source=spec, commit=commit, build_number=100, label='b100', backend='cpu')\n"
        "build, built = Builder(state).build(req, progress=False)\n"
        "print(built, build.key)\n"
    )
    import sys

    procs = [
        subprocess.Popen([sys.executable, str(script), str(state), str(upstream)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r[0] for r in results) == ["False", "True"] and results[0][1] == results[1][1]
