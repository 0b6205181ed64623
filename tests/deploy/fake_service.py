"""A stand-in for `homelab serve` in fast deploy tests: a real process on loopback.

Serves /health, /v1/models (the `models:` keys of --config) and /v1/completions. A model whose
`cmd` contains `--no-such-flag` fails its completion with 500 (what a bad llama-server flag does).
SIGHUP re-reads the config (and logs it); SIGTERM exits. Every start and reload is appended to
the file named by $FAKE_SERVICE_EVENTS, so tests can tell a reload from a restart.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
CONFIG = args["--config"]
host, _, port = args["--listen"].rpartition(":")
state = {"models": {}}


def event(what: str) -> None:
    path = os.environ.get("FAKE_SERVICE_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {os.getpid()}\n")
    print(f"fake-service: {what}", flush=True)


def load() -> None:
    with open(CONFIG) as f:
        state["models"] = (yaml.safe_load(f) or {}).get("models") or {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if self.path == "/v1/models":
            return self.reply(200, {"data": [{"id": m} for m in state["models"]]})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path == "/x-reload":  # what `homelab serve` offers: a synchronous reload
            load()
            event("reload")
            return self.reply(200, {"reloaded": True, "error": None, "changed": []})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        spec = state["models"].get(body.get("model"))
        if spec is None:
            return self.reply(404, {"error": {"message": "unknown model"}})
        if "--no-such-flag" in str(spec.get("cmd", "")):
            print("error: invalid argument: --no-such-flag", flush=True)
            return self.reply(500, {"error": {"message": "model failed to start"}})
        self.reply(200, {"choices": [{"text": "x"}]})


def on_hup(*_):
    load()
    event("reload")


load()
signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
server = ThreadingHTTPServer((host, int(port)), Handler)
event("start")
server.serve_forever()
