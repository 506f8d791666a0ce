"""Block forever without using CPU, so only the wall clock can stop it."""

import time

time.sleep(3600)
