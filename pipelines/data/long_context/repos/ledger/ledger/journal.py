"""The journal: every transaction, in order, and the balances they make."""

from __future__ import annotations

from ledger import money
from ledger.accounts import Account
from ledger.transactions import Transaction


class Journal:
    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = {a.name: a for a in accounts}
        self.transactions: list[Transaction] = []

    def add(self, tx: Transaction) -> None:
        if not tx.is_balanced():
            raise ValueError(f"unbalanced transaction: {tx.description}")
        unknown = [p.account for p in tx.postings if p.account not in self.accounts]
        if unknown:
            raise KeyError(f"unknown accounts: {unknown}")
        self.transactions.append(tx)

    def balance(self, name: str) -> money.Money:
        total = self.accounts[name].opening
        for tx in self.transactions:
            for posting in tx.postings:
                if posting.account == name:
                    total = total + posting.amount
        return total
