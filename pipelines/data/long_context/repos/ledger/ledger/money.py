"""Amounts of money as whole cents, so that sums are exact."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str = "EUR"

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise ValueError(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.cents + other.cents, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.cents - other.cents, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.cents, self.currency)

    def is_zero(self) -> bool:
        return self.cents == 0


def zero(currency: str = "EUR") -> Money:
    return Money(0, currency)


def parse_amount(text: str, currency: str = "EUR") -> Money:
    """'12.50' -> 1250 cents; '-3' -> -300 cents."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 2:
        raise ValueError(f"not an amount: {text!r}")
    return Money(sign * (int(whole) * 100 + int(frac.ljust(2, "0") or 0)), currency)


def format_money(money: Money) -> str:
    """1250 cents -> '12.50 EUR'."""
    sign = "-" if money.cents < 0 else ""
    whole, cents = divmod(abs(money.cents), 100)
    return f"{sign}{whole}.{cents:02d} {money.currency}"
