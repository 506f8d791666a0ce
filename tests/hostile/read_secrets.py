"""Look for secrets: our environment, other processes' environments and command lines, files.

Paths to try arrive as a JSON list on stdin; everything found is printed.
"""

import glob
import json
import os
import sys
from pathlib import Path

found = {"environ": dict(os.environ), "proc": {}, "files": {}}
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        found["proc"][path] = Path(path).read_bytes().decode(errors="replace")
    except OSError as exc:
        found["proc"][path] = f"blocked: {exc}"
for path in json.load(sys.stdin):
    try:
        if os.path.isdir(path):
            found["files"][path] = os.listdir(path)
        else:
            found["files"][path] = Path(path).read_text()
    except OSError as exc:
        found["files"][path] = f"blocked: {exc}"
print(json.dumps(found))
