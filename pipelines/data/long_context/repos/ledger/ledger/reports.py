"""Reports: the balance of every account, as text."""

from __future__ import annotations

from ledger.journal import Journal
from ledger.money import format_money


def balance_report(journal: Journal) -> list[str]:
    width = max((len(name) for name in journal.accounts), default=0)
    return [f"{name:<{width}}  {format_money(journal.balance(name))}" for name in sorted(journal.accounts)]
