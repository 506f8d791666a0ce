"""Whole-choice probabilities from token log-probs: the distribution a judge's score is read from.

A judge's score is one of the strings " 1" .. " 10" after "Score:". Read token by token these labels
overlap: on a tokenizer that writes " 10" as " 1" + "0" (SmolLM2 writes " ", "1", "0"), P(" 1") holds
all of P(" 10"), so a judge certain of 10 would look like one torn between 1 and 10 (an expectation
of ~5.5, below a judge certain of 9). A choice is therefore scored as a *whole*: the probability
that the text after the prefix spells the choice and then stops extending it,

    P(" 1" whole)  = P(" 1") * (1 - P(next token continues the number | " 1"))
    P(" 10" whole) = P(" 1") * P("0" | " 1") * (1 - P(next token continues the number | " 10"))

so the choices are disjoint outcomes. A token *continues* a choice that ends in a letter or digit when
its text starts with a letter or digit ("0" after " 1"; not "\\n", "/" or " "). A choice that ends in
anything else is never continued.

Two ways to get there, one per kind of engine:

* :func:`whole_choice_logprobs` needs the next-token distribution after the prompt + every prefix of
  every choice (the nodes of :func:`choice_nodes`). The hf engine computes these exactly (one forward
  pass over the prompt, one small batch over the nodes); the vllm engine reads them from ``logprobs=k``
  top alternatives, one max_tokens=1 request per node (the prompt is shared, so the prefix cache
  serves it).
* :func:`path_choice_logprobs` reads them off one generated reply with ``top_logprobs`` per position,
  which is all an OpenAI-compatible chat server gives: exact along the path the reply took; an
  alternative off the path counts as whole (its continuation is unseen), so a "1" that the reply did
  not take is read as the score 1, never 10.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

NEG_INF = float("-inf")


def continues(choice: str, text: str) -> bool:
    """Whether ``text``, written right after ``choice``, extends it into a longer word or number."""
    return bool(choice) and choice[-1].isalnum() and text[:1].isalnum()


def choice_nodes(token_ids: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Every prefix of every choice's tokens, the empty one and the whole choice included, once each
    (first the empty prefix): the places whose next-token distribution a whole choice needs."""
    nodes: dict[tuple[int, ...], None] = {(): None}
    for t in token_ids:
        for j in range(1, len(t) + 1):
            nodes[tuple(t[:j])] = None
    return list(nodes)


def whole_choice_logprobs(
    choices: Sequence[str],
    token_ids: Sequence[Sequence[int]],
    logprob: Callable[[tuple[int, ...], int], float],
    continuing: Callable[[tuple[int, ...]], float],
) -> dict[str, float]:
    """log P(each choice, whole) from next-token distributions at the nodes of :func:`choice_nodes`.

    ``logprob(node, token)`` is log P(token | prompt + node) (``-inf`` where unknown);
    ``continuing(node)`` is the probability that the token after prompt + node continues a word or
    number (starts with a letter or digit).
    """
    out = {}
    for c, t in zip(choices, token_ids, strict=True):
        lp = sum(logprob(tuple(t[:j]), t[j]) for j in range(len(t))) if t else NEG_INF
        if lp > NEG_INF and c and c[-1].isalnum():
            lp += _log1m(continuing(tuple(t)))
        out[c] = lp
    return out


def _log1m(p: float) -> float:
    """log(1 - p), -inf at p >= 1."""
    return math.log1p(-p) if p < 1.0 else NEG_INF


Token = tuple[str, float, dict[str, float]]  # (text, logprob, top alternatives {text: logprob})


def path_choice_logprobs(
    tokens: Sequence[Token], start: int, choices: Sequence[str]
) -> dict[str, float] | None:
    """log P(each choice, whole) read off one generated path with its top alternatives per position.

    ``tokens`` is the reply token by token: (text, logprob, {alternative text: logprob}) where the
    alternatives are the server's ``top_logprobs`` at that position. ``start`` is the character offset
    in the reply's text where a choice would begin (just after "Score:"). Along the path the
    probabilities are exact; the mass of alternatives the top list leaves out counts as not continuing
    a choice. None when no choice gets any probability (the reply never reached a choice).
    """
    choice_set = set(choices)
    probs = dict.fromkeys(choices, 0.0)
    mass = 1.0  # P(the path from `start` up to the current position)
    sofar = ""  # the path's text from `start` up to the current position
    offset = 0
    reached = False
    for text, lp, alts in tokens:
        end = offset + len(text)
        if end <= start:
            offset = end
            continue
        reached = True
        skip = max(0, start - offset)  # this token's characters before `start` (a straddling token)
        head, path = text[:skip], text[skip:]
        options: dict[str, float] = {}  # what could follow `sofar` here -> P (alternatives merged by text)
        for a, alp in alts.items():
            if a != text and a.startswith(head) and alp > NEG_INF:
                options[a[skip:]] = options.get(a[skip:], 0.0) + math.exp(alp)
        exact = sofar if sofar in choice_set else None
        if exact is not None:  # the path so far spells a whole choice: here it ends, or goes on
            cont = [a for a in options if continues(exact, a)]
            cont_p = sum(options[a] for a in cont) + (math.exp(lp) if continues(exact, path) else 0.0)
            probs[exact] += mass * max(0.0, 1.0 - cont_p)
            branches = cont
        else:
            branches = list(options)
        for a in branches:  # alternatives off the path: counted where they already decide a choice
            ch = _whole(sofar + a, choices, choice_set)
            if ch is not None:
                probs[ch] += mass * options[a]
        if exact is not None and not continues(exact, path):
            break  # the path ended the choice: counted above
        new = sofar + path
        if new not in choice_set and not any(c.startswith(new) for c in choices):
            ch = _whole(new, choices, choice_set)  # e.g. " 7\n" in one token
            if ch is not None:
                probs[ch] += mass * math.exp(lp)
            break
        mass *= math.exp(lp)
        sofar = new
        offset = end
    else:  # the reply stopped here: a choice spelled to the end counts as whole
        if reached and sofar in choice_set:
            probs[sofar] += mass
    if not any(p > 0 for p in probs.values()):
        return None
    return {c: (math.log(p) if p > 0 else NEG_INF) for c, p in probs.items()}


def _whole(text: str, choices: Sequence[str], choice_set: set[str]) -> str | None:
    """The choice ``text`` decides: the choice itself, or a choice then something that ends it."""
    if text in choice_set:
        return text
    for c in choices:
        if text.startswith(c) and len(text) > len(c) and not continues(c, text[len(c) :]):
            return c
    return None
