"""Anagrams and palindromes."""

from collections import defaultdict


def group_anagrams(words):
    """Groups of words made of the same letters, each group and the list sorted."""
    groups = defaultdict(list)
    for w in words:
        groups["".join(sorted(w.lower()))].append(w)
    return sorted(sorted(g) for g in groups.values())


def is_palindrome(text):
    letters = [ch.lower() for ch in text if ch.isalnum()]
    return letters == letters[::-1]
