"""A fake Hugging Face Hub on loopback, real HTTP, for tests (``from fakehub import FakeHub``).

It speaks the part of the Hub protocol that huggingface_hub (0.36 .. 2.x) and homelab use:

- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: LFS files (``*.gguf`` and anything added with
  ``lfs=True``) answer 302 to the download host with ``X-Repo-Commit``, ``X-Linked-Etag:
  "<sha256>"`` and ``X-Linked-Size``; plain files answer 200 with ``X-Repo-Commit`` and ``ETag``.
- the download host, on another host name (127.0.0.2: huggingface_hub refuses a redirect to the
  same host without ``X-Repo-Commit``), ``GET``/``HEAD /blobs/<sha256>`` honouring ``Range``
  with 206 and ``Content-Range``;
- ``GET /api/models/{repo}[/revision/{rev}]`` (``sha``, ``siblings``; ``?blobs=true`` adds
  ``size``, ``blobId``, ``lfs``), ``GET /api/models/{repo}/tree/{rev}[/{path}]``,
  ``POST /api/models/{repo}/paths-info/{rev}``;
- errors: 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``; a gated
  repo answers 401 (no token) or 403 (another token) with ``X-Error-Code: GatedRepo``.

Every request to either host is recorded (:attr:`FakeHub.requests`) so tests can assert that a
pinned, cached file costs zero requests. Knobs: :meth:`drop_once` (close the connection after
N body bytes, once: resume tests), :meth:`tamper` (serve one byte flipped: verification tests),
:meth:`add_file` / :meth:`add_repo` (each change makes a new commit on ``main``).

Usage::

    with FakeHub() as hub:
        commit = hub.add_repo("acme/tiny-GGUF", {"tiny.gguf": path_or_bytes})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        ...
        assert hub.requests == []
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LFS_SUFFIXES = (".gguf", ".bin", ".safetensors")


@dataclass(frozen=True)
class Recorded:
    host: str
    """``hub`` (the API/resolve host) or ``cdn`` (the download host)."""
    method: str
    path: str
    """Request path without the query string."""
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass(frozen=True)
class FakeFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    gated: bool = False
    commits: dict[str, dict[str, FakeFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        if rev in self.commits:
            return rev
        return None


class FakeHub:
    def __init__(self, token: str = "hf_fake_token") -> None:
        self.token = token
        """The one token that opens gated repos."""
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Recorded] = []
        self.telemetry = 0
        """Requests to ``/api/agent-harnesses`` (huggingface_hub 2.x, once a day): not recorded."""
        self._blobs: dict[str, FakeFile] = {}
        self._drops: dict[str, list[int]] = {}
        self._tampered: set[str] = set()
        self._lock = threading.Lock()
        self._counter = 0
        self._hub = _Server(("127.0.0.1", 0), self, "hub")
        self._cdn = _Server(("127.0.0.2", 0), self, "cdn")
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.2:{self._cdn.server_address[1]}"

    def start(self) -> FakeHub:
        for server in (self._hub, self._cdn):
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------

    def add_repo(
        self, repo_id: str, files: dict[str, bytes | Path], *, gated: bool = False, lfs: bool | None = None
    ) -> str:
        """Create (or replace the content of) a repo; returns the new ``main`` commit."""
        with self._lock:
            self.repos.setdefault(repo_id, FakeRepo(repo_id))
            self.repos[repo_id].gated = gated
        return self.commit(repo_id, files, replace=True, lfs=lfs)

    def add_file(self, repo_id: str, path: str, data: bytes | Path, *, lfs: bool | None = None) -> str:
        """Add or replace one file in a new commit on ``main``; returns the commit."""
        return self.commit(repo_id, {path: data}, lfs=lfs)

    def commit(
        self, repo_id: str, files: dict[str, bytes | Path], *, replace: bool = False, lfs: bool | None = None
    ) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            parent = {} if replace or "main" not in repo.refs else dict(repo.commits[repo.refs["main"]])
            for path, data in files.items():
                raw = data.read_bytes() if isinstance(data, Path) else bytes(data)
                is_lfs = path.endswith(LFS_SUFFIXES) if lfs is None else lfs
                parent[path] = FakeFile(raw, is_lfs)
                self._blobs[parent[path].sha256] = parent[path]
            self._counter += 1
            commit = hashlib.sha1(f"{repo_id}:{self._counter}:{sorted(parent)}".encode()).hexdigest()
            repo.commits[commit] = parent
            repo.refs["main"] = commit
            return commit

    def tag(self, repo_id: str, name: str, commit: str | None = None) -> None:
        repo = self.repos[repo_id]
        repo.refs[name] = commit or repo.refs["main"]

    def file(self, repo_id: str, path: str, rev: str = "main") -> FakeFile:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(rev) or rev][path]

    # -- knobs -------------------------------------------------------------------------------

    def drop_once(self, sha256: str, after_bytes: int) -> None:
        """The next GET of this blob sends ``after_bytes`` of the body, then hangs up.

        Calls queue up: three calls drop the next three GETs, each after its own count.
        """
        with self._lock:
            self._drops.setdefault(sha256, []).append(after_bytes)

    def _next_drop(self, sha256: str) -> int | None:
        with self._lock:
            queued = self._drops.get(sha256)
            return queued.pop(0) if queued else None

    def tamper(self, sha256: str) -> None:
        """Serve this blob with its middle byte flipped (the metadata still announces the real hash)."""
        self._tampered.add(sha256)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, host: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if host is None or r.host == host]

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _blob_bytes(self, sha256: str) -> bytes | None:
        blob = self._blobs.get(sha256)
        if blob is None:
            return None
        data = blob.data
        if sha256 in self._tampered and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hub: FakeHub, role: str) -> None:
        super().__init__(address, _Handler)
        self.hub = hub
        self.role = role


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _begin(self) -> tuple[str, dict[str, list[str]]]:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/api/agent-harnesses":  # huggingface_hub 2.x telemetry, not the protocol
            self.server.hub.telemetry += 1
            return url.path, {}
        self.server.hub._record(
            Recorded(
                host=self.server.role,
                method=self.command,
                path=urllib.parse.unquote(url.path),
                query=urllib.parse.parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
            )
        )
        return url.path, urllib.parse.parse_qs(url.query)

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, body)

    def _authorized(self, repo: FakeRepo) -> bool:
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization", "")
        if auth == f"Bearer {self.server.hub.token}":
            return True
        if auth:
            self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted: accept the conditions")
        else:
            self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must be authenticated.")
        return False

    def _repo_rev(self, repo_id: str, rev: str) -> tuple[FakeRepo, str] | None:
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not self._authorized(repo):
            return None
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, commit

    # -- verbs -------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, query = self._begin()
        if self.server.role == "cdn":
            return self._blob(path)
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if path == "/api/agent-harnesses":
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            if not rest:
                return self._info(repo_id, "main", query)
            if rest[0] == "revision" and len(rest) >= 2:
                return self._info(repo_id, "/".join(rest[1:]), query)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
        self._error(404, "NotFound", f"no route for {path}")

    def do_POST(self) -> None:
        path, _ = self._begin()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "paths-info":
            if self.headers.get("Content-Type", "").startswith("application/json"):
                form = json.loads(raw or "{}")
                paths = form.get("paths", [])
            else:
                form_q = urllib.parse.parse_qs(raw)
                paths = form_q.get("paths", [])
            found = self._repo_rev("/".join(parts[2:4]), parts[5])
            if found is None:
                return
            repo, commit = found
            files = repo.commits[commit]
            self._json([_entry(p, files[p]) for p in paths if p in files])
            return
        self._error(404, "NotFound", f"no route for {path}")

    # -- endpoints ---------------------------------------------------------------------------

    def _resolve(self, repo_id: str, rev: str, file_path: str) -> None:
        found = self._repo_rev(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        f = repo.commits[commit].get(file_path)
        if f is None:
            self._error(404, "EntryNotFound", f"{file_path} does not exist on {rev}")
            return
        if f.lfs:
            location = f"{self.server.hub.cdn}/blobs/{f.sha256}?name={urllib.parse.quote(file_path)}"
            self._send(
                302,
                {
                    "Location": location,
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(len(f.data)),
                    "ETag": f'"{f.git_oid}"',
                },
            )
            return
        self._ranged(f.data, {"X-Repo-Commit": commit, "ETag": f'"{f.git_oid}"'})

    def _blob(self, path: str) -> None:
        sha = path.rsplit("/", 1)[-1]
        data = self.server.hub._blob_bytes(sha)
        if data is None:
            self._error(404, "EntryNotFound", "no such blob")
            return
        drop = self.server.hub._next_drop(sha) if self.command == "GET" else None
        self._ranged(data, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}, drop_after=drop)

    def _ranged(self, data: bytes, headers: dict[str, str], drop_after: int | None = None) -> None:
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes=") :].partition("-")
            start = int(first) if first else max(len(data) - int(last), 0)
            end = min(int(last), len(data) - 1) if first and last else len(data) - 1
            if start >= len(data):
                self._send(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        body = data[start : end + 1]
        if drop_after is None or self.command == "HEAD":
            self._send(status, headers, body)
            return
        # Announce the whole body, send part of it, hang up: a dropped connection mid-download.
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:drop_after])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def _info(self, repo_id: str, rev: str, query: dict[str, list[str]]) -> None:
        found = self._repo_rev(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        blobs = query.get("blobs", ["false"])[0].lower() in {"1", "true"}
        siblings = []
        for p, f in sorted(repo.commits[commit].items()):
            s: dict[str, Any] = {"rfilename": p}
            if blobs:
                s.update(size=len(f.data), blobId=f.git_oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
            siblings.append(s)
        self._json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit,
                "private": False,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "tags": ["gguf"],
                "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
            }
        )

    def _tree(self, repo_id: str, rev: str, sub: str, query: dict[str, list[str]]) -> None:
        found = self._repo_rev(repo_id, rev)
        if found is None:
            return
        repo, commit = found
        recursive = query.get("recursive", ["false"])[0].lower() in {"1", "true"}
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p, f in sorted(repo.commits[commit].items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if "/" in rest and not recursive:
                d = prefix + rest.split("/", 1)[0]
                if d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
                continue
            entries.append(_entry(p, f))
        self._json(entries)


def _entry(path: str, f: FakeFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": len(f.data), "path": path}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
    return entry
