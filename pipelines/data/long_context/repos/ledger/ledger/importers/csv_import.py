"""Transactions from CSV lines: date,description,account,amount (one posting per line; lines with the
same date and description make one transaction)."""

from __future__ import annotations

import csv
import io

from ..money import parse_amount
from ..transactions import Posting, Transaction


def read_transactions(text: str, currency: str = "EUR") -> list[Transaction]:
    found: dict[tuple[str, str], Transaction] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row or row[0].startswith("#"):
            continue
        date, description, account, amount = (cell.strip() for cell in row)
        tx = found.setdefault((date, description), Transaction(date, description))
        tx.postings.append(Posting(account, parse_amount(amount, currency)))
    return list(found.values())
