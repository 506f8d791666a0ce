"""Structured output: a JSON schema or a regular expression that a reply must satisfy.

A request asks for it through ``SamplingParams(json_schema=...)`` or ``SamplingParams(regex=...)``;
every engine honours it in its own way:

* ``vllm``: constrained decoding (vLLM's structured outputs, ``StructuredOutputsParams(json=...)`` /
  ``regex=``): every token keeps the reply inside the schema, so a reply is valid unless it was cut at
  ``max_tokens``.
* ``openai``: ``response_format: {"type": "json_schema", ...}`` (the OpenAI API; vLLM and others
  constrain with it), and for a regex vLLM's ``structured_outputs: {"regex": ...}`` extension. The
  reply is checked here too, and an invalid one (a server that ignores the format) asked for again.
* ``hf``: validate and retry: the reply is checked; one that holds a valid value inside other text
  (a code fence, a sentence around it) is cut to that value; an invalid one is sampled again.

A completion that is still invalid after the retries keeps its text and says why in
``Completion.extra["structured_error"]``; a valid one has no such key. :func:`parse` gives the value.

Ready-made schemas for the uses the recipes have: a judge's score (:data:`JUDGE_SCORE`), an extracted
problem (:data:`PROBLEM`) and a tool call (:func:`tool_call_schema`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from synth.engines.base import Completion, Request, SamplingParams

ERROR_KEY = "structured_error"
RETRY_TEMPERATURE = 0.7  # what a greedy request's retries sample at

JUDGE_SCORE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 2000},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["reasoning", "score"],
    "additionalProperties": False,
}

PROBLEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "problem": {"type": "string", "minLength": 1},
        "answer": {"type": "string", "minLength": 1},
    },
    "required": ["problem", "answer"],
    "additionalProperties": False,
}


def tool_call_schema(tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A call of one of ``tools`` (name -> JSON schema of its arguments): ``{"name", "arguments"}``."""
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, params in tools.items()
        ]
    }


def constraint(sampling: SamplingParams) -> tuple[str, Any] | None:
    """``("json", schema)``, ``("regex", pattern)`` or None."""
    if sampling.json_schema is not None:
        return ("json", sampling.json_schema)
    if sampling.regex is not None:
        return ("regex", sampling.regex)
    return None


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``schema`` is not a valid JSON schema."""
    import jsonschema

    try:
        _validator(json.dumps(schema, sort_keys=True))
    except jsonschema.SchemaError as e:
        raise ValueError(f"json_schema is not a valid JSON schema: {e.message}") from None


def schema_error(value: Any, schema: dict[str, Any]) -> str | None:
    """Why ``value`` does not satisfy ``schema`` (the first error), or None."""
    err = next(iter(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value)), None)
    if err is None:
        return None
    where = "/".join(str(p) for p in err.absolute_path)
    return f"{where + ': ' if where else ''}{err.message}"


def validate(text: str, sampling: SamplingParams) -> str | None:
    """Why ``text`` does not satisfy the request's constraint, or None (also when there is none)."""
    c = constraint(sampling)
    if c is None:
        return None
    kind, spec = c
    if kind == "regex":
        return None if re.fullmatch(spec, text, flags=re.DOTALL) else f"does not match the regex {spec!r}"
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    return schema_error(value, spec)


_DECODER = json.JSONDecoder()


def salvage(text: str, sampling: SamplingParams) -> str | None:
    """The first part of ``text`` that satisfies the constraint (the JSON value in a code fence or a
    sentence, the regex's first match), or None. For the engines that do not constrain decoding."""
    c = constraint(sampling)
    if c is None:
        return text
    kind, spec = c
    if kind == "regex":
        m = re.search(spec, text, flags=re.DOTALL)
        return m.group(0) if m and re.fullmatch(spec, m.group(0), flags=re.DOTALL) else None
    for i, ch in enumerate(text):
        if ch not in "{[":
            continue
        try:
            value, end = _DECODER.raw_decode(text, i)
        except ValueError:
            continue
        if schema_error(value, spec) is None:
            return text[i:end]
    return None


def mark(comp: Completion, sampling: SamplingParams, lenient: bool = False) -> Completion:
    """Check one completion against the constraint: valid (``lenient``: its valid part kept as its
    text), or marked with ``extra["structured_error"]``."""
    if constraint(sampling) is None:
        return comp
    comp.extra.pop(ERROR_KEY, None)
    err = validate(comp.text, sampling)
    if err is not None and lenient:
        part = salvage(comp.text, sampling)
        if part is not None:
            comp.text, err = part, None
    if err is not None:
        cut = " (cut at max_tokens)" if comp.finish_reason == "length" else ""
        comp.extra[ERROR_KEY] = err + cut
    return comp


def is_valid(comp: Completion) -> bool:
    return ERROR_KEY not in comp.extra


def parse(comp: Completion) -> Any:
    """The value of a valid JSON completion; ``ValueError`` with the reason for an invalid one."""
    if not is_valid(comp):
        raise ValueError(comp.extra[ERROR_KEY])
    return json.loads(comp.text)


Generate = Callable[[list[Request], SamplingParams], list[list[Completion]]]


def generate_checked(
    generate: Generate,
    requests: list[Request],
    sampling: SamplingParams,
    retries: int,
    lenient: bool = False,
) -> list[list[Completion]]:
    """``generate`` under the request's constraint, checked: invalid samples are asked for again
    (only those: n = the number still invalid, a seed moved on each round; a greedy request's retries
    sample at ``RETRY_TEMPERATURE``) up to ``retries`` times. A kept sample's completion tokens add up
    over the attempts it took (what it cost); ``extra["structured_attempts"]`` counts them."""
    results = generate(requests, sampling)
    if constraint(sampling) is None:
        return results
    for comps in results:
        for c in comps:
            mark(c, sampling, lenient)
    for attempt in range(1, retries + 1):
        todo = [(i, [j for j, c in enumerate(comps) if not is_valid(c)]) for i, comps in enumerate(results)]
        todo = [(i, js) for i, js in todo if js]
        if not todo:
            break
        by_n: dict[int, list[tuple[int, list[int]]]] = {}
        for i, js in todo:
            by_n.setdefault(len(js), []).append((i, js))
        for n, group in sorted(by_n.items()):
            seed = None if sampling.seed is None else sampling.seed + 1_000_003 * attempt
            # a greedy request would write the same reply again: its retries sample
            again = sampling.replace(n=n, seed=seed, temperature=sampling.temperature or RETRY_TEMPERATURE)
            fresh = generate([requests[i] for i, _ in group], again)
            for (i, js), comps in zip(group, fresh, strict=True):
                for j, c in zip(js, comps, strict=True):
                    old = results[i][j]
                    mark(c, sampling, lenient)
                    c.completion_tokens += old.completion_tokens
                    c.extra["structured_attempts"] = old.extra.get("structured_attempts", 1) + 1
                    results[i][j] = c
    return results
