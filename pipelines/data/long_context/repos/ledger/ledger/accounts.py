"""Accounts: where money is, and what kind of account holds it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.money import Money, zero

KINDS = ("asset", "liability", "income", "expense", "equity")


@dataclass
class Account:
    name: str
    kind: str
    opening: Money = field(default_factory=zero)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown account kind {self.kind!r}")
