"""Function schemas: Python functions with type hints and docstrings -> OpenAI function schemas, and
arguments checked against those schemas (the JSON Schema subset the schemas use).

``function_schema(fn)`` reads the signature (a parameter without a default is required), the type
hints (``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict``, ``Literal[...]``, ``T | None``,
``Optional[T]``) and the docstring: its first paragraph is the function's description, and an
``Args:`` section (Google style) or ``:param name:`` lines describe the parameters. A function without
a docstring, or with a parameter that has no type hint (or ``*args`` / ``**kwargs``), has no schema
(``SchemaError`` says why): Llama 3 dropped functions with missing docstrings too.

``check_arguments(arguments, parameters)`` returns the first violation ("missing required argument
'path'", "'n' must be integer, got string", "unknown argument 'x'", ...) or None; an argument the
function does not take is a violation unless the schema sets ``additionalProperties``.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_PARAM_LINE = re.compile(r"^\s*:param\s+(?:\w+\s+)?(\w+)\s*:\s*(.*)$")
_SECTIONS = ("args:", "arguments:", "parameters:", "returns:", "return:", "raises:", "yields:",
             "examples:", "example:", "note:", "notes:")  # fmt: skip


class SchemaError(ValueError):
    """A function that cannot be turned into a tool schema (one line, naming it)."""


def json_type(hint: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of one type hint."""
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if hint in (list, tuple):
        return {"type": "array"}
    if hint is dict:
        return {"type": "object"}
    if hint is Any:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        values = list(args)
        kinds = {_JSON_TYPES.get(type(v)) for v in values}
        out: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and None not in kinds:
            out["type"] = kinds.pop()
        return out
    if origin in (list, tuple, set, frozenset):
        item = args[0] if args else Any
        return {"type": "array", **({"items": json_type(item, where)} if item is not Any else {})}
    if origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = json_type(rest[0], where)
            if "type" in inner and len(rest) < len(args):
                inner = {**inner, "type": [inner["type"], "null"]}
            return inner
        return {"anyOf": [json_type(a, where) for a in args]}
    raise SchemaError(
        f"{where}: type {hint!r} has no JSON schema (use str, int, float, bool, list, dict, Literal)"
    )


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style or reST docstring."""
    doc = inspect.cleandoc(doc or "")
    lines = doc.splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section = None
    current = None
    for line in lines:
        low = line.strip().lower()
        if low in _SECTIONS:
            section = low.rstrip(":")
            current = None
            continue
        m = _PARAM_LINE.match(line)
        if m:
            current = m.group(1)
            params[current] = m.group(2).strip()
            section = "param"
            continue
        if section in ("args", "arguments", "parameters"):
            m = _ARG_LINE.match(line)
            if m and (len(line) - len(line.lstrip())) <= _indent_of_args(lines):
                current = m.group(1).lstrip("*")
                params[current] = m.group(2).strip()
            elif current and line.strip():
                params[current] = (params[current] + " " + line.strip()).strip()
            continue
        if section is None:
            if not line.strip() and description:
                section = "after"
                continue
            if line.strip():
                description.append(line.strip())
        elif section == "param" and current and line.strip() and not line.strip().startswith(":"):
            params[current] = (params[current] + " " + line.strip()).strip()
    return " ".join(description), params


def _indent_of_args(lines: list[str]) -> int:
    """The indentation of the entries under an Args: heading (its first non-blank entry line)."""
    seen = False
    for line in lines:
        if line.strip().lower() in ("args:", "arguments:", "parameters:"):
            seen = True
            continue
        if seen and line.strip():
            return len(line) - len(line.lstrip())
    return 0


def function_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The OpenAI function schema of ``fn``: ``{"type": "function", "function": {name, description,
    parameters}}``; ``SchemaError`` when it has no docstring or an unannotated parameter."""
    name = name or fn.__name__
    doc = inspect.getdoc(fn)
    if not doc or not doc.strip():
        raise SchemaError(f"{name}: no docstring (a tool needs a description)")
    description, docs = parse_docstring(doc)
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # a hint that does not resolve
        raise SchemaError(f"{name}: type hints do not resolve ({e})") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise SchemaError(f"{name}: *args / **kwargs cannot be described by a schema")
        if p.name not in hints:
            raise SchemaError(f"{name}: parameter '{p.name}' has no type hint")
        prop = json_type(hints[p.name], f"{name}.{p.name}")
        if p.name in docs:
            prop["description"] = docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        elif isinstance(p.default, str | int | float | bool) or p.default is None:
            prop["default"] = p.default
        properties[p.name] = prop
    parameters = {"type": "object", "properties": properties, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def tool_schema(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    """An OpenAI function schema written by hand (the core tools)."""
    parameters = {"type": "object", "properties": properties, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


# -- checking arguments ------------------------------------------------------------------------
def _is(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "null":
        return value is None
    return True


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def check_value(value: Any, schema: dict[str, Any], where: str) -> str | None:
    """The first way ``value`` breaks ``schema`` (type, enum, items, properties), or None."""
    if "anyOf" in schema:
        if all(check_value(value, s, where) for s in schema["anyOf"]):
            return f"'{where}' matches none of its allowed types, got {_json_name(value)}"
        return None
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, k) for k in kinds):
            return f"'{where}' must be {' or '.join(kinds)}, got {_json_name(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"'{where}' must be one of {schema['enum']}, got {value!r}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problem = check_value(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    if isinstance(value, dict) and "properties" in schema:
        return check_arguments(value, schema, where + ".")
    return None


def check_arguments(arguments: Any, parameters: dict[str, Any], prefix: str = "") -> str | None:
    """The first way a call's ``arguments`` break the function's ``parameters`` schema, or None:
    not an object, a missing required argument, an unknown one, or a value of the wrong type."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {_json_name(arguments)}"
    properties = parameters.get("properties", {})
    for name in parameters.get("required", []):
        if name not in arguments:
            return f"missing required argument '{prefix}{name}'"
    for name, value in arguments.items():
        if name not in properties:
            if parameters.get("additionalProperties", False) is False:
                return f"unknown argument '{prefix}{name}' (takes {', '.join(properties) or 'none'})"
            continue
        problem = check_value(value, properties[name], prefix + name)
        if problem:
            return problem
    return None
