"""``homelab bench fetch``: our fetch path against ``curl -o`` on the same local file.

A small Hub-shaped server on loopback serves one generated file: ``/{repo}/resolve/{rev}/{path}``
answers 302 with the Hub's headers to a download host on 127.0.0.2 that sends the file with
``sendfile`` (so the server is not the bottleneck). Our side is the real fetch: huggingface_hub's
``hf_hub_download`` into a fresh HF cache plus sha256 verification. curl follows the same
redirect (``-L``) and writes with ``-o``. Prints both throughputs and ours/curl.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import HomelabError
from ..hub.cache import hf_cache_path
from ..hub.fetch import _fetch_file
from ..lock import PinnedFile

REPO = "bench/fetch-GGUF"
NAME = "bench.gguf"
COMMIT = "b" * 40


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise HomelabError(f"--size {text!r}: give bytes or a number with K, M or G (e.g. 256M)") from None


def make_file(path: Path, size: int) -> str:
    """Incompressible-looking bytes (a 16 MiB random block repeated); returns the sha256."""
    block = os.urandom(16 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        srv = self.server
        if srv.role == "hub" and "/resolve/" not in self.path:
            # e.g. huggingface_hub's daily /api/agent-harnesses: not part of what we measure
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.role == "hub":
            self.send_response(302)
            self.send_header("Location", f"{srv.cdn}/blob")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{srv.sha256}"')
            self.send_header("X-Linked-Size", str(srv.size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{srv.size - 1}/{srv.size}")
        self.send_header("Content-Length", str(srv.size - start))
        self.send_header("ETag", f'"{srv.sha256}"')
        self.end_headers()
        if self.command == "GET":
            self.wfile.flush()
            with open(srv.path, "rb") as f:
                self.connection.sendfile(f, offset=start)


def _serve(host: str, role: str, **attrs: Any) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    server.role = role  # type: ignore[attr-defined]  # ad-hoc attribute read by _Handler
    for k, v in attrs.items():
        setattr(server, k, v)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def cmd_bench_fetch(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="homelab-bench-fetch-"))
    servers: list[ThreadingHTTPServer] = []
    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HOMELAB_STATE")}
    try:
        if shutil.disk_usage(tmp).free < 3 * size:
            raise HomelabError(f"bench fetch needs {3 * size} bytes free in {tmp.parent} (file, HF cache, curl copy)")
        print(f"generating {size / 2**20:.0f} MiB in {tmp} ...")
        src = tmp / "served.bin"
        sha = make_file(src, size)
        cdn = _serve("127.0.0.2", "cdn", path=src, size=size, sha256=sha)
        cdn_url = f"http://127.0.0.2:{cdn.server_address[1]}"
        hub = _serve("127.0.0.1", "hub", cdn=cdn_url, size=size, sha256=sha)
        servers += [cdn, hub]
        endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        os.environ.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf"), HOMELAB_STATE=str(tmp / "state"))
        os.environ.pop("HF_HUB_CACHE", None)

        os.sync()  # the generated file's dirty pages must not slow whichever run comes first

        curl = shutil.which("curl")
        pf = PinnedFile(source="hf", repo=REPO, revision=COMMIT, path=NAME, size=size, sha256=sha)
        ours: list[float] = []
        base: list[float] = []

        def run_ours() -> None:
            shutil.rmtree(tmp / "hf", ignore_errors=True)
            t0 = time.perf_counter()
            with tqdm(disable=True) as overall:
                verified = _fetch_file(pf, hf_cache_path(pf), tmp, overall, progress=False)
            ours.append(time.perf_counter() - t0)
            assert verified.sha256 == sha
            shutil.rmtree(tmp / "hf")
            os.sync()
            print(f"run {run}: homelab fetch (download + sha256 + HF cache): {size / ours[-1] / 2**20:8.1f} MiB/s")

        def run_curl() -> None:
            assert curl is not None
            out = tmp / "curl.bin"
            t0 = time.perf_counter()
            subprocess.run([curl, "-sSfL", "-o", str(out), f"{endpoint}/{REPO}/resolve/{COMMIT}/{NAME}"], check=True)
            base.append(time.perf_counter() - t0)
            assert out.stat().st_size == size
            out.unlink()
            os.sync()
            print(f"run {run}: curl -o:                                        {size / base[-1] / 2**20:8.1f} MiB/s")

        for run in range(1, args.runs + 1):
            # alternate who goes first: the first transfer after a sync is measurably slower here
            order = [run_ours, run_curl] if run % 2 else [run_curl, run_ours]
            for step in order:
                if step is run_curl and curl is None:
                    continue
                step()
        print(f"best of {args.runs}: homelab {size / min(ours) / 2**20:.1f} MiB/s", end="")
        if not base:
            print("; curl not found: no baseline (apt-get install curl)")
            return 0
        print(f", curl {size / min(base) / 2**20:.1f} MiB/s, ratio {min(base) / min(ours):.2f} (target >= 0.8)")
        print(
            f"median of {args.runs}: homelab {size / statistics.median(ours) / 2**20:.1f} MiB/s, "
            f"curl {size / statistics.median(base) / 2**20:.1f} MiB/s, "
            f"ratio {statistics.median(base) / statistics.median(ours):.2f}"
        )
        return 0
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if getattr(args, "keep", False):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def register(cli) -> None:  # noqa: ANN001 - homelab.cli.CLI
    p = cli.benchmark("fetch", cmd_bench_fetch, "our fetch (download + sha256) vs curl -o of the same local file")
    p.add_argument("--size", default="1G", help="file size: bytes or with K/M/G suffix (default 1G)")
    p.add_argument(
        "--runs", type=int, default=4, help="runs of each, alternating who goes first; the best of each is compared"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
