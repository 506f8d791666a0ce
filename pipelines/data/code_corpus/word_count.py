"""Counting words in text."""

import re
from collections import Counter


def words(text):
    return re.findall(r"[a-z']+", text.lower())


def top_words(text, n=3):
    """The n most common words, most common first; ties in alphabetical order."""
    counts = Counter(words(text))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def longest_word(text):
    found = words(text)
    return max(found, key=len) if found else ""
