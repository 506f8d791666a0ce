"""Fill every writable place with 1 MB writes, then report how far it got and why it stopped."""

import json
import os

report = {}
for target in ("/work", "/tmp", "/dev/shm"):
    written, error, index = 0, None, 0
    chunk = b"\0" * 2**20
    try:
        while written < 2**31:
            with open(os.path.join(target, f"fill{index}"), "wb") as f:
                for _ in range(32):
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
            index += 1
    except OSError as exc:
        error = exc.errno
    report[target] = {"written_mb": written // 2**20, "errno": error}
print(json.dumps(report))
