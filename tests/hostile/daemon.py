"""Double-fork and setsid a long sleeper (its duration, from stdin, marks it), then exit.

The parent lingers a moment so a test can see the daemon exists before the run ends.
"""

import os
import sys
import time

duration = sys.stdin.read().strip()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execv("/usr/bin/sleep", ["sleep", duration])
    os._exit(0)
os.wait()
time.sleep(1.0)
print("parent done")
