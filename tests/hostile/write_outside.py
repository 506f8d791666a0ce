"""Try to create a file in each directory given as a JSON list on stdin."""

import json
import os
import sys

report = {}
for directory in json.load(sys.stdin):
    path = os.path.join(directory, "sandbox-escape-marker")
    try:
        with open(path, "w") as f:
            f.write("escaped")
        report[directory] = "written"
    except OSError as exc:
        report[directory] = f"blocked: {exc.strerror}"
print(json.dumps(report))
