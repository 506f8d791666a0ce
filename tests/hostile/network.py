"""Try to reach the host's listener (port on stdin), the internet and DNS."""

import json
import socket
import sys

port = int(sys.stdin.read())
report = {}
for name, address in {"host_listener": ("127.0.0.1", port), "internet": ("1.1.1.1", 53)}.items():
    try:
        socket.create_connection(address, timeout=2).close()
        report[name] = "connected"
    except OSError as exc:
        report[name] = f"blocked: {exc}"
try:
    socket.getaddrinfo("pypi.org", 443)
    report["dns"] = "resolved"
except OSError as exc:
    report["dns"] = f"blocked: {exc}"
print(json.dumps(report))
