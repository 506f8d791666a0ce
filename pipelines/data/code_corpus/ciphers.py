"""Classical ciphers on ASCII letters."""

import string


def caesar(text, shift):
    def rotate(ch):
        for alphabet in (string.ascii_lowercase, string.ascii_uppercase):
            if ch in alphabet:
                return alphabet[(alphabet.index(ch) + shift) % 26]
        return ch

    return "".join(rotate(ch) for ch in text)


def vigenere(text, key):
    out, i = [], 0
    for ch in text:
        if ch.isalpha():
            out.append(caesar(ch, ord(key[i % len(key)].lower()) - ord("a")))
            i += 1
        else:
            out.append(ch)
    return "".join(out)
