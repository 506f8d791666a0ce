"""Allocate 10 MB blocks until something stops us."""

blocks = []
while True:
    blocks.append(bytearray(10**7))
