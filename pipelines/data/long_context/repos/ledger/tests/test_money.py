import unittest

from ledger.money import Money, format_money, parse_amount, zero


class MoneyTest(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_amount("12.50"), Money(1250))
        self.assertEqual(parse_amount("-3"), Money(-300))
        self.assertEqual(parse_amount("0.05", "USD"), Money(5, "USD"))
        with self.assertRaises(ValueError):
            parse_amount("1.234")

    def test_arithmetic(self):
        self.assertEqual(Money(100) + Money(250), Money(350))
        self.assertEqual(Money(100) - Money(250), Money(-150))
        self.assertEqual(-Money(5), Money(-5))
        self.assertTrue(zero().is_zero())
        with self.assertRaises(ValueError):
            Money(1, "EUR") + Money(1, "USD")

    def test_format(self):
        self.assertEqual(format_money(Money(1250)), "12.50 EUR")
        self.assertEqual(format_money(Money(-7, "USD")), "-0.07 USD")


if __name__ == "__main__":
    unittest.main()
