"""Deterministic train/test assignment, decided row by row so an export can stream.

A row goes to ``test`` when a hash of its id and the seed falls below the test fraction: a function
of (id, seed) alone, whatever the order or the number of rows. The one exception is the guarantee
that two or more rows with 0 < test_fraction < 1 put at least one row in each split; :class:`Splitter`
settles it at the end of the stream while holding back a single row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def split_fraction(record_id: str, seed: int = 0) -> float:
    """A stable number in [0, 1) from the record id and the seed."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_test_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")


def _other(split: str) -> str:
    return "train" if split == "test" else "test"


class Splitter(Generic[T]):
    """Assigns ``(id, item)`` pairs to ``"train"``/``"test"`` as they arrive, exactly as
    :func:`assign_splits` does for the whole list.

    While every row seen so far hashed into the same split, the row the guarantee would move to the
    other split (the lowest hash of an all-train stream, the highest of an all-test one) is held
    back; it is released to its own split as soon as the other split gets a row, or moved at
    :meth:`finish`. Items come back as ``(split, item)`` pairs, at most one row late.
    """

    def __init__(self, test_fraction: float, seed: int = 0) -> None:
        check_test_fraction(test_fraction)
        self.test_fraction = test_fraction
        self.seed = seed
        self._guaranteed = 0.0 < test_fraction < 1.0
        self._seen = {"train": 0, "test": 0}
        self._held: tuple[float, str, T] | None = None  # (hash, split, item)

    def add(self, record_id: str, item: T) -> list[tuple[str, T]]:
        """The items whose split is now settled: this one, the one held back, both or neither."""
        key = split_fraction(record_id, self.seed)
        split = "test" if key < self.test_fraction else "train"
        self._seen[split] += 1
        if not self._guaranteed or all(self._seen.values()):
            return [*self._release(), (split, item)]
        held = self._held
        # Ties resolve as assign_splits' sort by (hash, position): first lowest, last highest.
        if held is None or (key < held[0] if split == "train" else key >= held[0]):
            self._held = (key, split, item)
            return [] if held is None else [(held[1], held[2])]
        return [(split, item)]

    def finish(self) -> list[tuple[str, T]]:
        """The held-back item, moved to the empty split when the stream had two rows or more."""
        if self._held is None:
            return []
        _, split, item = self._held
        self._held = None
        # A row is still held only when every row landed in the same split.
        return [(_other(split) if sum(self._seen.values()) >= 2 else split, item)]

    def _release(self) -> list[tuple[str, T]]:
        if self._held is None:
            return []
        _, split, item = self._held
        self._held = None
        return [(split, item)]


def assign_splits(ids: Sequence[str], test_fraction: float, seed: int = 0) -> list[str]:
    """``"train"``/``"test"`` per id: test when its hash falls below ``test_fraction``.

    Depends only on (id, seed), not on order. When there are >= 2 ids and
    0 < test_fraction < 1, at least one lands in each split (the lowest hash is moved to test,
    or the highest to train).
    """
    splitter: Splitter[int] = Splitter(test_fraction, seed)
    out = [""] * len(ids)
    for position, record_id in enumerate(ids):
        for split, j in splitter.add(record_id, position):
            out[j] = split
    for split, j in splitter.finish():
        out[j] = split
    return out
