"""A stand-in for llama.cpp's rpc-server in deploy tests: a real TCP listener on loopback.

``tcp_listener.py -H ADDR -p PORT [...]`` (rpc-server's flags; others are ignored) accepts and
closes connections until SIGTERM. ``--fail`` exits at once with an error, as rpc-server does
when it cannot bind. Each start is appended to $FAKE_SERVICE_EVENTS as ``rpc-start <pid>``.
"""

import os
import signal
import socket
import sys

args = sys.argv[1:]
host, port = args[args.index("-H") + 1], int(args[args.index("-p") + 1])
if "--fail" in args:
    print(f"error: failed to bind {host}:{port}", flush=True)
    sys.exit(1)
path = os.environ.get("FAKE_SERVICE_EVENTS")
if path:
    with open(path, "a") as f:
        f.write(f"rpc-start {os.getpid()}\n")
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
server = socket.create_server((host, port))
print(f"rpc stand-in listening on {host}:{port}", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
