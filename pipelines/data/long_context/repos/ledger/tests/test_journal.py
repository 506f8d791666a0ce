from ledger import Money
from ledger.accounts import Account
from ledger.importers.csv_import import read_transactions
from ledger.journal import Journal
from ledger.reports import balance_report

CSV = """# date,description,account,amount
2024-01-02,salary,bank,2500.00
2024-01-02,salary,income,-2500.00
2024-01-05,rent,rent,900
2024-01-05,rent,bank,-900
"""


def journal():
    j = Journal(
        [Account("bank", "asset", Money(10000)), Account("income", "income"), Account("rent", "expense")]
    )
    for tx in read_transactions(CSV):
        j.add(tx)
    return j


def test_balances():
    j = journal()
    assert j.balance("bank") == Money(10000 + 250000 - 90000)
    assert j.balance("income") == Money(-250000)


def test_report():
    assert balance_report(journal()) == ["bank    1700.00 EUR", "income  -2500.00 EUR", "rent    900.00 EUR"]


def test_unbalanced_is_refused():
    j = journal()
    tx = read_transactions("2024-02-01,typo,bank,10\n2024-02-01,typo,rent,-9\n")[0]
    try:
        j.add(tx)
    except ValueError:
        return
    raise AssertionError("an unbalanced transaction was accepted")
