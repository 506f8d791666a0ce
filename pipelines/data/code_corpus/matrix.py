"""Small dense matrices as lists of rows."""


def transpose(m):
    return [list(row) for row in zip(*m, strict=True)]


def multiply(a, b):
    if len(a[0]) != len(b):
        raise ValueError("inner dimensions differ")
    cols = transpose(b)
    return [[sum(x * y for x, y in zip(row, col, strict=True)) for col in cols] for row in a]


def identity(n):
    return [[1 if i == j else 0 for j in range(n)] for i in range(n)]


def trace(m):
    return sum(m[i][i] for i in range(len(m)))
