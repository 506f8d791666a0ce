"""Configs as dataclasses: one source for a command's CLI options, its YAML keys and their docs.

A config field carries its help text and allowed range (``option(...)``); ``Config.__post_init__``
checks every range, so a bad value fails at the boundary with the range in the message. ``build``
merges, in order, the dataclass defaults, a YAML file, explicit options and ``--set key=value``
overrides (as TRL's configs and torchtune's ``tune run`` do); ``command`` turns a config class into a
click command whose ``--help`` lists every field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import yaml

MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    choices: Sequence[str] | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    rows: bool = True,
) -> Any:
    """A config field with its help text and allowed values (``min``/``max`` inclusive, ``gt``
    exclusive: ``gt=0`` for a learning rate). ``rows=False``: the field changes no row a run writes
    (where the run lives, a server's URL, a batch size, a timeout), so a run resumes with another
    value of it (``row_neutral``)."""
    if gt is not None:
        min = None
    meta = {
        "gt": gt,
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices else None,
        "flag": flag,
        "rows": rows,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def row_neutral(cls: type[Config] | Config) -> set[str]:
    """The fields of a config that change no row (declared ``option(..., rows=False)``)."""
    return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("rows", True)}


class ConfigError(ValueError):
    """A config value or key that cannot be used (one line, naming the key)."""


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base of every config: validates each field against its declared range and choices."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None or isinstance(value, bool):
                continue
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
            lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
            if not isinstance(value, int | float):
                continue
            too_low = value <= gt if gt is not None else (lo is not None and value < lo)
            if too_low or (hi is not None and value > hi):
                shown = _range(gt, hi, open_low=True) if gt is not None else _range(lo, hi)
                raise ConfigError(f"{f.name} must be in {shown}, got {value}")


def _range(lo: float | None, hi: float | None, open_low: bool = False) -> str:
    left = f"({lo}" if open_low else f"[{lo}"
    if hi is None:
        return f"{left}, inf)"
    if lo is None:
        return f"(-inf, {hi}]"
    return f"{left}, {hi}]"


# -- merging sources ---------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (``k=2``, ``languages=[php]``)."""
    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set takes key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else ""
    return out


def build(cls: type[Config], *layers: Mapping[str, Any], where: str = "config") -> Config:
    """An instance of ``cls`` from layered mappings (later wins); unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        unknown = sorted(set(layer) - set(names))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
        values.update(layer)
    missing = [
        n
        for n, f in names.items()
        if f.default is MISSING and f.default_factory is MISSING and n not in values
    ]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join('--' + m.replace('_', '-') for m in missing)}")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    base, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if base in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            number = base(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} must be {'an integer' if base is int else 'a number'}, got {value!r}"
            ) from None
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return number
    if base is str:
        return str(value)
    if base in (list, tuple):
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return base(value)
    if base is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return value
    return value


def _base_type(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base, _ = _base_type(args[0]) if len(args) == 1 else (object, False)
        return base, True
    if origin is not None:
        return origin, False
    return hint, False


# -- the command line ---------------------------------------------------------------------------
def command(
    cls: type[Config],
    name: str,
    callback: Callable[[Config], None],
    help: str,
    *,
    yaml_option: bool = True,
) -> click.Command:
    """A click command with one option per config field (``--max-tokens``), plus ``--config FILE``
    and ``--set key=value``; the callback gets the built config."""
    hints = typing.get_type_hints(cls)
    params: list[click.Parameter] = []
    for f in dataclasses.fields(cls):
        params.append(_option_for(f, hints[f.name]))
    if yaml_option:
        params.append(
            click.Option(
                ["--config", "config_file"],
                type=click.Path(dir_okay=False),
                default=None,
                help="YAML file of config keys (the options below, with _ for -).",
            )  # fmt: skip
        )
    params.append(
        click.Option(
            ["--set", "sets"],
            multiple=True,
            metavar="KEY=VALUE",
            help="Override one config key (repeatable), e.g. --set k=2.",
        )  # fmt: skip
    )

    def run(**kwargs: Any) -> None:
        config_file = kwargs.pop("config_file", None)
        sets = kwargs.pop("sets", ())
        given = {k: v for k, v in kwargs.items() if v is not None}
        try:
            layers = [load_yaml(config_file)] if config_file else []
            cfg = build(cls, *layers, given, parse_sets(sets), where=config_file or name)
        except ConfigError as e:
            raise click.UsageError(str(e)) from None
        callback(cfg)

    return click.Command(
        name, params=params, callback=run, help=_keep_blocks(help), short_help=help.split("\n")[0]
    )


def _keep_blocks(text: str) -> str:
    """Mark indented paragraphs (diagrams, examples) so click prints them as written."""
    paragraphs = text.split("\n\n")
    return "\n\n".join("\b\n" + p if p.startswith("    ") else p for p in paragraphs)


def _option_for(f: dataclasses.Field, hint: Any) -> click.Option:
    base, _ = _base_type(hint)
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    required = f.default is MISSING and f.default_factory is MISSING
    default = None if required else (f.default if f.default is not MISSING else f.default_factory())
    text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        text += f" One of: {', '.join(f.metadata['choices'])}."
    lo, hi, gt = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("gt")
    if gt is not None:
        text += f" Range: {_range(gt, hi, open_low=True)}."
    elif lo is not None or hi is not None:
        text += f" Range: {_range(lo, hi)}."
    if required:
        text += " [required: option or config key]"
    elif default not in (None, "", [], {}):
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        text += f" [default: {shown}]"
    if base is bool:
        name = flag.removeprefix("--")
        return click.Option([f"--{name}/--no-{name}", f.name], default=None, help=text)
    kinds = {int: int, float: float}
    metavar = {list: "A,B", tuple: "A,B", dict: "YAML"}.get(
        base, base.__name__.upper() if base in kinds else "TEXT"
    )
    return click.Option([flag, f.name], type=kinds.get(base, str), default=None, help=text, metavar=metavar)
