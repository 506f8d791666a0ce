"""Run-length encoding of strings."""


def encode(text):
    """'aaabcc' -> [('a', 3), ('b', 1), ('c', 2)]"""
    runs = []
    for ch in text:
        if runs and runs[-1][0] == ch:
            runs[-1] = (ch, runs[-1][1] + 1)
        else:
            runs.append((ch, 1))
    return runs


def decode(runs):
    return "".join(ch * count for ch, count in runs)


def compress(text):
    """'aaabcc' -> 'a3bc2' (a count of 1 is left out)."""
    return "".join(ch + (str(n) if n > 1 else "") for ch, n in encode(text))
