"""Write to stdout and stderr as fast as possible."""

import sys

line = "x" * 4096 + "\n"
while True:
    sys.stdout.write(line)
    sys.stderr.write(line)
