"""Where prompts and earlier rounds' rows come from: a JSONL file, an exported dataset folder, or a
finished run directory (for rejection sampling and ``synth round``).

- ``load_prompts``: prompt-only rows, streamed, from a JSONL of prompts (``{"prompt": ...}``,
  ``{"messages": [...]}``), an exported dataset folder (the prompt part of its sft rows, deduplicated;
  a prompt's id is then the hash of its messages, the id a JSONL prompt without an explicit id gets
  too) or a finished run directory (``prompts_of_run``).
- ``prompts_of_run``: the chat prompts of a run's declared prompt stage (run meta ``outputs.prompts``;
  runs written before recipes declared one have their prompts in stage "seeds"). Rows there are
  prompt-only ``SFTRecord``s or ``Item``s that can stand for a chat prompt (``Item.as_prompt``).
- ``load_previous``: rows with a response from an exported dataset folder, a finished run directory
  (its declared sft outputs) or a JSONL of records / exported rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.io import read_records, read_seeds
from synth.records import Item, Message, PreferenceRecord, Provenance, Record, SFTRecord, stable_id
from synth.stats import iter_outputs
from synth.store import DB_NAME, Store

LEGACY_PROMPT_STAGE = "seeds"  # where runs written before declared outputs keep their prompts


def prompt_key(messages: list[Message]) -> str:
    """Id of a prompt from its messages (what ``seed_to_record`` gives a prompt without an id)."""
    return stable_id([{"role": m.role, "content": m.content} for m in messages])


def is_run_dir(path: Path | str) -> bool:
    return (Path(path) / DB_NAME).is_file()


def load_prompts(path: Path | str, capability: str, **read_kwargs: Any) -> Iterator[SFTRecord]:
    """Prompt-only records from a JSONL of prompts, an exported dataset folder or a finished run
    directory, streamed (``capability``: for prompts that do not name one; ``read_kwargs``:
    ``skip_invalid`` / ``on_bad`` for a JSONL, as ``synth.io.read_seeds`` takes them)."""
    path = Path(path)
    if is_run_dir(path):
        return prompts_of_run(path)
    if path.is_dir():
        return _export_prompts(path, capability)
    return read_seeds(path, capability, **read_kwargs)


def prompts_of_run(run_dir: Path | str) -> Iterator[SFTRecord]:
    """The chat prompts of a finished run's declared prompt stage, as prompt-only ``SFTRecord``s
    (ids and provenance kept; an ``Item`` that stands for no chat prompt is left out)."""
    store = Store(run_dir, read_only=True)
    try:
        outputs = store.get_meta("outputs") or {}
        stage = outputs.get("prompts", LEGACY_PROMPT_STAGE)  # declared None: the run has no prompts
        if stage is None:
            return
        if not store.query("SELECT 1 FROM stages WHERE stage = ?", [stage]):
            raise ValueError(f"{run_dir}: no prompt stage {stage!r} to take prompts from")
        capability = store.get_meta("capability") or "general"
        for rec in store.iter_records(stage, kept=True):
            prompt = as_prompt_record(rec, capability)
            if prompt is not None:
                yield prompt
    finally:
        store.close()


def as_prompt_record(rec: Record, capability: str) -> SFTRecord | None:
    """A fresh prompt-only row for ``rec`` (its chat before the final answer, or the prompt an item
    stands for), without the scores, verdicts and meta of the run it comes from."""
    if isinstance(rec, SFTRecord):
        messages: list[Message] | None = rec.prompt
    elif isinstance(rec, Item):
        messages = rec.as_prompt()
    else:
        return None
    if not messages:
        return None
    return SFTRecord(
        id=rec.id,
        messages=[Message.model_validate(m.model_dump()) for m in messages],
        provenance=rec.provenance or Provenance(capability=capability),
    )


def _export_prompts(path: Path, capability: str) -> Iterator[SFTRecord]:
    seen: set[str] = set()
    for rec in _export_records(path):
        prompt = [Message.model_validate(m.model_dump()) for m in rec.prompt]
        pid = prompt_key(prompt)
        if pid in seen:
            continue
        seen.add(pid)
        cap = rec.provenance.capability if rec.provenance else capability
        yield SFTRecord(
            id=pid, messages=prompt, provenance=Provenance(capability=cap, source=f"{path.name}:{rec.id}")
        )
    if not seen:
        raise ValueError(f"{path}: the exported dataset has no sft rows to take prompts from")


def _export_records(path: Path) -> Iterator[SFTRecord]:
    from synth.export import load_export

    dd = load_export(path, "sft")  # memory-mapped: rows are read as they are used
    for split in dd:
        for row in dd[split]:
            yield row_to_record(row)


def iter_output_rows(
    path: Path | str, kind: str, purpose: str = "to mix (run it to the end first)"
) -> Iterator[Record]:
    """A finished run's kept output rows of ``kind`` (sft or preference), or an exported dataset
    folder's rows of that config, streamed (``synth mix`` reads its sources so)."""
    path = Path(path)
    if is_run_dir(path):
        store = Store(path, read_only=True)
        try:
            if not store.get_meta("outputs"):
                raise ValueError(f"{path} has no finished run output {purpose}")
            yield from iter_outputs(store, kind)
        finally:
            store.close()
    elif path.is_dir():
        if kind == "sft":
            yield from _export_records(path)
        else:
            yield from _export_preferences(path)
    else:
        raise ValueError(f"{path}: neither a run directory nor an exported dataset folder")


def _export_preferences(path: Path) -> Iterator[PreferenceRecord]:
    from synth.export import load_export

    if not (path / "preference").is_dir():
        return
    dd = load_export(path, "preference")
    for split in dd:
        for row in dd[split]:
            yield preference_row_to_record(row)


def preference_row_to_record(row: dict[str, Any]) -> PreferenceRecord:
    """An exported preference row back into a record (chosen, rejected and edited responses)."""
    data = dict(row)
    capability = data.pop("capability", None)
    scores = json.loads(data.get("scores") or "{}") if isinstance(data.get("scores"), str) else {}
    provenance = json.loads(data.get("provenance") or "{}") if isinstance(data.get("provenance"), str) else {}
    responses = []
    for label in ("edited", "chosen", "rejected"):
        turns = data.get(label) or []
        if turns:
            score = data.get(f"{label}_score")
            responses.append({"label": label, "content": turns[0]["content"], "score": score})
    return PreferenceRecord.model_validate(
        {
            "id": data["id"],
            "prompt": data["prompt"],
            "responses": responses,
            "strength": data.get("strength"),
            "scores": {k: v for k, v in scores.items() if v is not None},
            "provenance": provenance or ({"capability": capability} if capability else None),
        }
    )


def row_to_record(row: dict[str, Any]) -> SFTRecord:
    """An exported sft row (scores/provenance as JSON text, a capability column) or a record dict."""
    data = dict(row)
    if data.get("kind", "sft") != "sft":
        raise ValueError(f"expected an sft row, got kind={data.get('kind')!r}")
    capability = data.pop("capability", None)
    for name in ("scores", "provenance", "meta"):
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name]) if data[name].strip() else None
    if not data.get("provenance"):
        data["provenance"] = {"capability": capability} if capability else None
    data["scores"] = {k: v for k, v in (data.get("scores") or {}).items() if v is not None}
    for name in ("meta", "verdicts"):
        if data.get(name) is None:
            data.pop(name, None)
    return SFTRecord.model_validate(data)


def load_previous(path: Path | str) -> list[SFTRecord]:
    """Previous rounds' rows that have a response: from an exported dataset folder, a finished run
    directory (its declared sft outputs) or a JSONL of records / exported rows. A list: callers hold
    them (rejection sampling's previous rows are one best row per prompt)."""
    path = Path(path)
    if is_run_dir(path):
        rows = iter_output_rows(path, "sft", "to take previous rows from")
        records: list[Any] = [r for r in rows if isinstance(r, SFTRecord)]
    elif path.is_dir():
        records = list(_export_records(path))
    else:
        records = read_records(path, row_to_record)
    return [r for r in records if r.response]
