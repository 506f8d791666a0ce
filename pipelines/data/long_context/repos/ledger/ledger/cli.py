"""`python -m ledger.cli FILE.csv`: import the file and print the balances."""

from __future__ import annotations

import sys

from ledger.accounts import Account
from ledger.importers.csv_import import read_transactions
from ledger.journal import Journal
from ledger.reports import balance_report


def main(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        transactions = read_transactions(fh.read())
    names = sorted({p.account for tx in transactions for p in tx.postings})
    journal = Journal([Account(name, "asset") for name in names])
    for tx in transactions:
        journal.add(tx)
    print("\n".join(balance_report(journal)))


if __name__ == "__main__":
    main(sys.argv[1])
