"""A small double-entry bookkeeping library: money, accounts, transactions, a journal and reports."""

from ledger.money import Money

__all__ = ["Money"]
__version__ = "0.1.0"
