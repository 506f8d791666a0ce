"""Each child stays under the per-process address-space limit; together they do not."""

import os
import time

children = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(150 * 2**20)
        for i in range(0, len(block), 4096):  # touch every page so it is really resident
            block[i] = 1
        time.sleep(1)
        os._exit(0)
    children.append(pid)
print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
