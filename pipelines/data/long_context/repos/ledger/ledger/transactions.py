"""Transactions: postings to accounts that sum to zero."""

from __future__ import annotations

from dataclasses import dataclass, field

from .money import Money, zero


@dataclass
class Posting:
    account: str
    amount: Money


@dataclass
class Transaction:
    date: str
    description: str
    postings: list[Posting] = field(default_factory=list)

    def total(self) -> Money:
        total = zero(self.postings[0].amount.currency) if self.postings else zero()
        for posting in self.postings:
            total = total + posting.amount
        return total

    def is_balanced(self) -> bool:
        return len(self.postings) >= 2 and self.total().is_zero()
