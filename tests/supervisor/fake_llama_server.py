"""A fake ``llama-server``: a small real process for fast supervisor tests (stdlib only, starts fast).

    python fake_llama_server.py --port 5800 [--name NAME] [--load-time S] [--crash-on-start]
        [--crash-after S] [--hang-health] [--ignore-sigterm] [--fork-child] [--child-pid-file F]
        [--token-rate R] [--tokens N] [--die-mid-stream K] [--pid-file F] [--listen-delay S] [--cors]

Behaves like llama-server where the supervisor looks: ``/health`` answers 503 while "loading"
and 200 when ready, prints ``server is listening`` / ``all slots are idle``, exits on a failed
load, answers ``/v1/chat/completions`` (JSON and SSE at a set token rate; request bodies with a
Content-Length or chunked), ``/v1/completions``,
``/completion``, ``/v1/embeddings``, ``/v1/models``, ``/props``, and answers the routes in
``RECORDED`` (audio, images, rerank, count_tokens, versionless) with the path, size and SHA-256
of the body it received. Every JSON answer carries
``x_received`` (the request body as parsed) and ``x_server`` (the ``--name``), so tests can check
what the supervisor forwarded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS: argparse.Namespace
READY_AT = 0.0
REQUESTS = 0


RECORDED = ("/v1/audio/", "/v1/images/", "/rerank", "/reranking", "/v1/rerank", "/v1/reranking",
            "/v1/messages/count_tokens", "/sdapi/", "/chat/completions", "/completions", "/responses",
            "/messages", "/embeddings", "/v1/tasks/")
"""POST paths answered with what the fake received (path, body size and SHA-256)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="fake")
    p.add_argument("--load-time", type=float, default=0.0)
    p.add_argument("--listen-delay", type=float, default=0.0)
    p.add_argument("--crash-on-start", action="store_true")
    p.add_argument("--crash-after", type=float, default=0.0)
    p.add_argument("--hang-health", action="store_true")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--fork-child", action="store_true")
    p.add_argument("--child-pid-file")
    p.add_argument("--pid-file")
    p.add_argument("--token-rate", type=float, default=0.0, help="tokens per second (0: as fast as possible)")
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--die-mid-stream", type=int, default=0, help="exit after sending K tokens of a stream")
    p.add_argument("--request-delay", type=float, default=0.0)
    p.add_argument("--die-on-request", action="store_true", help="exit while answering a POST")
    p.add_argument("--x-marker", help="ignored: lets a test find its own processes")
    p.add_argument("-m", "--model", help="ignored: a file the supervisor may read ahead")
    p.add_argument("--cors", action="store_true", help="send Access-Control-Allow-Origin: * as llama-server does")
    p.add_argument("--log-requests", action="store_true", help="print a line per request, as llama-server does")
    return p.parse_args(argv)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _json(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if ARGS.cors:
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def _ready(self) -> bool:
        return time.monotonic() >= READY_AT

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            if ARGS.hang_health:
                time.sleep(3600)
            if self._ready():
                self._json(200, {"status": "ok"})
            else:
                self._json(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
        elif self.path.startswith("/v1/models") or self.path.startswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": ARGS.name, "object": "model"}]})
        elif self.path.startswith("/props"):
            self._json(200, {"model_path": ARGS.name, "total_slots": 1, "x_path": self.path})
        elif self.path.startswith(("/v1/audio/voices", "/sdapi/v1/loras")):
            self._json(200, {"voices": ["fake"], "x_server": ARGS.name, "x_path": self.path})
        elif self.path.startswith("/echo"):
            self._json(200, {"x_server": ARGS.name, "path": self.path, "headers": dict(self.headers)})
        else:
            self._json(404, {"error": {"code": 404, "message": "not found"}})

    def do_POST(self) -> None:
        global REQUESTS
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = self._read_chunked()  # a streamed upload without Content-Length
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"x_raw_bytes": len(raw)}
        if not self._ready():
            self._json(503, {"error": {"code": 503, "message": "Loading model"},
                             "x_server": ARGS.name, "x_pid": os.getpid(), "x_ready_in": READY_AT - time.monotonic()})
            return
        REQUESTS += 1
        if ARGS.log_requests:  # as llama-server logs each task it serves
            say(f"slot launch_slot_: id 0 | task {REQUESTS} | processing task ({ARGS.name})")
        if ARGS.die_on_request:
            os._exit(9)
        if ARGS.request_delay:
            time.sleep(ARGS.request_delay)
        if self.path.startswith("/v1/embeddings"):
            self._json(200, {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                             "model": payload.get("model"), "x_server": ARGS.name, "x_received": payload,
                             "usage": {"prompt_tokens": 3, "total_tokens": 3}})
            return
        if self.path.startswith("/echo"):
            self._json(200, {"x_server": ARGS.name, "path": self.path, "headers": dict(self.headers),
                             "x_received": payload, "x_raw_bytes": len(raw)})
            return
        if self.path.startswith(RECORDED):
            # one answer that the openai client can parse for each of these routes (transcription
            # "text", count_tokens "input_tokens", rerank "results"), plus what arrived here
            self._json(200, {"text": "fake transcript", "input_tokens": 7,
                             "results": [{"index": 0, "relevance_score": 0.5}],
                             "x_server": ARGS.name, "x_path": self.path, "x_raw_bytes": len(raw),
                             "x_sha256": hashlib.sha256(raw).hexdigest(), "x_received": payload,
                             "x_content_type": self.headers.get("Content-Type", "")})
            return
        if payload.get("stream"):
            self._stream(payload)
            return
        text = " ".join(f"t{i}" for i in range(ARGS.tokens))
        self._json(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": payload.get("model", ARGS.name),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": ARGS.tokens, "total_tokens": 5 + ARGS.tokens},
            "x_server": ARGS.name, "x_received": payload,
        })

    def _read_chunked(self) -> bytes:
        parts = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):  # trailer fields
            pass
        return b"".join(parts)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, payload: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        if ARGS.cors:
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        n = int(payload.get("max_tokens") or ARGS.tokens)
        for i in range(n):
            if ARGS.die_mid_stream and i == ARGS.die_mid_stream:
                # let the tokens already sent reach the client first: "mid-stream" means the
                # answer had started, not a race with the response headers on a loaded machine
                time.sleep(0.5)
                os._exit(7)
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": payload.get("model", ARGS.name), "x_server": ARGS.name,
                     "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if ARGS.token_rate:
                time.sleep(1.0 / ARGS.token_rate)
        final = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": payload.get("model", ARGS.name),
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}}
        self._chunk(b"data: " + json.dumps(final).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main(argv: list[str] | None = None) -> None:
    global ARGS, READY_AT
    ARGS = parse_args(argv)
    if ARGS.pid_file:
        with open(ARGS.pid_file, "w") as f:
            f.write(str(os.getpid()))
    if ARGS.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if ARGS.fork_child:
        pid = os.fork()
        if pid == 0:  # the grandchild of the supervisor: sleeps until killed
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(60)
        if ARGS.child_pid_file:
            with open(ARGS.child_pid_file, "w") as f:
                f.write(str(pid))
    say(f"fake llama-server {ARGS.name} pid {os.getpid()}")
    if ARGS.listen_delay:
        time.sleep(ARGS.listen_delay)
    server = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    server.daemon_threads = True
    READY_AT = time.monotonic() + ARGS.load_time
    say(f"main: HTTP server is listening, hostname: {ARGS.host}, port: {ARGS.port}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if ARGS.load_time:
        time.sleep(ARGS.load_time)
    if ARGS.crash_on_start:
        say("llama_model_load: error loading model: fake failure for tests")
        os._exit(1)
    say("main: model loaded")
    say("srv  update_slots: all slots are idle")
    if ARGS.crash_after:
        time.sleep(ARGS.crash_after)
        say("fake crash coming")  # two writes: the second lands while the supervisor batches reads
        time.sleep(0.005)
        say("fake crash")
        os._exit(3)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
