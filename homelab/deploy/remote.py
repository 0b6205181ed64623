"""Remote hosts (``address: ssh://user@host[:port]``): sync, then run the same chain there.

The inventory (hosts with their lockfiles, recipes, patches) and homelab's own source are copied
to ``~/<HOMELAB_REMOTE_DIR>`` on the remote (rsync over ssh when both ends have it, else tar over
ssh), then ``homelab deploy HOST --local`` runs there with the synced source first on
``PYTHONPATH``; its output streams back line by line. Heavy steps (fetch, build) thus run where
the GPU and the disk are.

Environment: ``HOMELAB_SSH`` (the ssh command, default ``ssh``; e.g. ``ssh -F ~/.ssh/lab``),
``HOMELAB_REMOTE_DIR`` (default ``.local/share/homelab``, relative to the remote home),
``HOMELAB_REMOTE_PYTHON`` (the remote interpreter; default the bootstrapped venv),
``HOMELAB_REMOTE_STATE`` (the remote ``HOMELAB_STATE``), ``HOMELAB_REMOTE_ENV`` (extra
``KEY=VALUE`` words for the remote command), ``HOMELAB_BOOTSTRAP_PIP_ARGS``. ``HF_ENDPOINT`` is
passed through when set.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import HomelabError
from ..files import atomic_write_bytes
from ..settings import CHECKOUT

SOURCE_FILES = ("pyproject.toml", "README.md", "dodo.py")
INVENTORY_DIRS = ("hosts", "recipes", "patches")
SKIP = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.mypy_cache)(/|$)|\.pyc$")

BUILD_TOOLS = {
    "common": ["git", "cmake", "c++", "make", "python3"],
    "hip": ["hipconfig"],
    "cuda": ["nvcc"],
    "vulkan": ["glslc"],
    "cpu": [],
}


class RemoteError(HomelabError):
    pass


@dataclass(frozen=True)
class SSHAddress:
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, address: str) -> SSHAddress:
        match = re.fullmatch(r"ssh://(?:([^@/\s]+)@)?([^:/\s]+)(?::(\d+))?", address)
        if not match:
            raise RemoteError(f"{address!r} is not ssh://user@host[:port]")
        user, host, port = match.groups()
        if host.startswith("-") or (user or "").startswith("-"):
            raise RemoteError(f"{address!r}: a user or host name cannot start with '-' (ssh would read an option)")
        return cls(user, host, int(port) if port else None)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"ssh://{self.destination}" + (f":{self.port}" if self.port else "")


def ssh_base(address: SSHAddress) -> list[str]:
    """The ssh command without the remote command: ``$HOMELAB_SSH`` plus port and batch mode."""
    argv = shlex.split(os.environ.get("HOMELAB_SSH", "ssh"))
    if address.port:
        argv += ["-p", str(address.port)]
    # "--" ends ssh's options: a destination can never be read as one (-oProxyCommand=...)
    return argv + ["-o", "BatchMode=yes", "--", address.destination]


def remote_dir() -> str:
    return os.environ.get("HOMELAB_REMOTE_DIR", ".local/share/homelab")


def remote_path(sub: str = "") -> str:
    """A shell word for ``~/<HOMELAB_REMOTE_DIR>/<sub>`` on the remote (absolute dirs as given)."""
    base = remote_dir().rstrip("/")
    path = f"{base}/{sub}" if sub else base
    return shlex.quote(path) if base.startswith("/") else f'"$HOME"/{shlex.quote(path)}'


def _ssh(address: SSHAddress, command: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([*ssh_base(address), command], **kwargs)
    except FileNotFoundError:
        raise RemoteError("ssh is not installed here: install openssh-client") from None


def _check(result: subprocess.CompletedProcess, what: str, address: SSHAddress) -> None:
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else (result.stderr or "")
        last = err.strip().splitlines()[-1:] or ["no message"]
        raise RemoteError(f"{what} on {address} failed (exit {result.returncode}): {last[0]}")


def _files(base: Path, names: Iterable[str]) -> list[Path]:
    out = []
    for name in names:
        path = base / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and not SKIP.search(p.relative_to(base).as_posix()):
                    out.append(p)
    return out


def _tar(base: Path, files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(base).as_posix(), recursive=False)
    return buffer.getvalue()


def sync_tree(address: SSHAddress, base: Path, names: list[str], sub: str) -> str:
    """Mirror ``names`` (files and folders under ``base``) into ``<remote dir>/<sub>``.

    Returns how it synced ("rsync" or "tar"). Files gone locally disappear remotely too."""
    files = _files(base, names)
    dest = remote_path(sub)
    probe = _ssh(
        address,
        f"mkdir -p {dest} && (command -v rsync >/dev/null && echo rsync || echo tar)",
        capture_output=True,
    )
    _check(probe, "mkdir", address)
    present = [n for n in names if (base / n).exists()]
    if shutil.which("rsync") and probe.stdout.decode().strip() == "rsync" and present:
        # without "--": rsync adds its own options (-l user) after this command
        ssh_e = shlex.join(ssh_base(address)[:-2])
        result = subprocess.run(
            [
                "rsync",
                "-rltR",
                "--delete",
                "--exclude=__pycache__",
                "--exclude=*.pyc",
                "--exclude=.pytest_cache",
                "-e",
                ssh_e,
                *[f"{base}/./{n}" for n in present],
                f"{address.destination}:{remote_dir().rstrip('/')}/{sub}/",
            ],
            capture_output=True,
        )
        _check(result, "rsync", address)
        return "rsync"
    wipe = " ".join(shlex.quote(n) for n in names)
    result = _ssh(
        address,
        f"cd {dest} && rm -rf {wipe} && tar -xzf -",
        input=_tar(base, files),
        capture_output=True,
    )
    _check(result, "tar", address)
    return "tar"


def sync(address: SSHAddress, inventory: Path, say: Callable[[str], None] = print) -> None:
    how = sync_tree(address, CHECKOUT, ["homelab", *SOURCE_FILES], "src")
    sync_tree(address, inventory, list(INVENTORY_DIRS), "inventory")
    say(f"synced homelab source and inventory to {address}:{remote_dir()} ({how})")


def fetch_back_lock(address: SSHAddress, host: str, lock_file: Path, say: Callable[[str], None] = print) -> bool:
    """Copy the remote's ``hosts/<host>.lock.json`` back when the remote chain (re)locked: the
    lockfile belongs in the user's inventory, next to the host file. True when it changed."""
    result = _ssh(address, f"cat {remote_path(f'inventory/hosts/{host}.lock.json')}", capture_output=True)
    if result.returncode != 0 or not result.stdout:
        return False
    try:
        if lock_file.read_bytes() == result.stdout:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(lock_file, result.stdout)
    say(f"updated {lock_file} from {address}")
    return True


def remote_env() -> list[str]:
    words = [
        f"HOMELAB_INVENTORY={remote_path('inventory')}",
        f"PYTHONPATH={remote_path('src')}",
        "PYTHONUNBUFFERED=1",  # stream each line back as it is printed, not in blocks at the end
    ]
    if os.environ.get("HOMELAB_REMOTE_STATE"):
        words.append(f"HOMELAB_STATE={shlex.quote(os.environ['HOMELAB_REMOTE_STATE'])}")
    if os.environ.get("HF_ENDPOINT"):
        words.append(f"HF_ENDPOINT={shlex.quote(os.environ['HF_ENDPOINT'])}")
    words += [shlex.quote(w) for w in shlex.split(os.environ.get("HOMELAB_REMOTE_ENV", ""))]
    return words


def remote_python() -> str:
    explicit = os.environ.get("HOMELAB_REMOTE_PYTHON")
    if explicit:
        return shlex.quote(explicit)
    return remote_path("venv/bin/python")


def run_homelab(address: SSHAddress, args: list[str], say: Callable[[str], None] = print) -> int:
    """Run ``homelab ARGS`` on the remote, streaming its output through ``say``."""
    command = f"cd {remote_path()} && env {' '.join(remote_env())} {remote_python()} -m homelab.cli {shlex.join(args)}"
    try:
        proc = subprocess.Popen(
            [*ssh_base(address), command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
    except FileNotFoundError:
        raise RemoteError("ssh is not installed here: install openssh-client") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        say(line.rstrip("\n"))
    return proc.wait()


def bootstrap_script(backend: str, pip_args: str, deps: bool = True) -> str:
    """The shell script bootstrap runs on the remote (read from stdin by ``sh -s``).

    homelab itself is put on the venv's path with a ``.pth`` file pointing at the synced source:
    each later sync updates it with no reinstall (and no wheel build). Its dependencies come from
    pyproject.toml through pip (``HOMELAB_BOOTSTRAP_PIP_ARGS`` adds e.g. ``--find-links``)."""
    tools = BUILD_TOOLS["common"] + BUILD_TOOLS.get(backend, [])
    install_deps = (
        'venv/bin/python -c \'import tomllib; print("\\n".join(tomllib.load(open("src/pyproject.toml", "rb"))["project"]["dependencies"]))\' > requirements.txt\n'
        f"venv/bin/python -m pip install --quiet --disable-pip-version-check {pip_args} -r requirements.txt\n"
        'echo "dependencies installed: $(wc -l < requirements.txt) packages from pyproject.toml"\n'
        if deps
        else "echo 'dependencies: skipped (--no-deps)'\n"
    )
    return f"""set -e
cd {remote_path()}
PY="${{HOMELAB_BOOTSTRAP_PYTHON:-python3}}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "homelab needs Python >= 3.11, found " + sys.version.split()[0]'
if [ ! -x venv/bin/python ]; then "$PY" -m venv venv; echo "created venv {remote_dir()}/venv"; fi
{install_deps}SITE=$(venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD/src" > "$SITE/homelab-src.pth"
PYTHONPATH= venv/bin/python -c 'import homelab, sys; print("homelab", homelab.__version__, "installed in", sys.prefix)'
missing=""
for tool in {" ".join(tools)}; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ]; then echo "missing build tools:$missing"; exit 3; fi
echo "build tools present: {" ".join(tools)}"
"""


def bootstrap(
    address: SSHAddress, inventory: Path, backend: str, deps: bool = True, say: Callable[[str], None] = print
) -> int:
    sync(address, inventory, say)
    pip_args = os.environ.get("HOMELAB_BOOTSTRAP_PIP_ARGS", "")
    env = ""
    if os.environ.get("HOMELAB_BOOTSTRAP_PYTHON"):
        env = f"HOMELAB_BOOTSTRAP_PYTHON={shlex.quote(os.environ['HOMELAB_BOOTSTRAP_PYTHON'])} "
    proc = subprocess.Popen(
        [*ssh_base(address), f"{env}sh -s"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(bootstrap_script(backend, pip_args, deps))
    for line in out.splitlines():
        say(line)
    if proc.returncode == 3:
        say(
            "install the missing tools on the remote (Debian/Ubuntu: apt-get install git cmake "
            "build-essential; plus the GPU toolkit for the backend), then deploy"
        )
    return proc.returncode


def stream_prefixed(prefix: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        sys.stdout.write(f"{prefix}{line}\n")
        sys.stdout.flush()

    return say
