"""Token counts with the model's own tokenizer, the recipe's lengths, and the length-bucket stage.

Every length here is in the tokens of the model in use, never in characters: documents are cut into
chunks of ``chunk`` tokens at token boundaries (a line break in a chunk's last quarter is preferred, so
chunks end at the end of a line where they can), and a finished SFT row is measured as the model will
see it, rendered with its chat template. Llama 3 sorts its long-context rows into 16K, 32K, 64K and 128K
buckets, an eighth, a quarter, a half and all of its 128K context, and cuts documents into 8K chunks (a
sixteenth); here the defaults are the same fractions of the context of the model in use
(``resolve_lengths``): 1K, 2K, 4K and 8K buckets and 512-token chunks for the embedded model's 8K.

The tokenizer is the model's (``--tokenizer`` names another, e.g. the one of a model behind an
OpenAI-compatible server) and is loaded on first use only, so a resumed run whose counting is done loads
nothing. The context length is ``--context-length``, else what the openai engine's server lists, else
the model's ``max_position_embeddings``, else the tokenizer's model's.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from synth.config import ConfigError
from synth.engines.embedded import is_embedded, resolve_model
from synth.records import SFTRecord

BUCKET_FRACTIONS = (8, 4, 2, 1)  # Llama 3: 16K, 32K, 64K, 128K of 128K
CHUNK_FRACTION = 16  # Llama 3: 8K chunks of a 128K context
PREFER_BREAK_AFTER = 0.75  # a chunk ends at a line break found in its last quarter


def tokenizer_path(source: str | None) -> str:
    """The folder or hub id to load a tokenizer from: the embedded model's folder for None or an alias."""
    return resolve_model(source) if is_embedded(source) else str(Path(source).expanduser())  # type: ignore[arg-type]


def check_tokenizer(source: str | None) -> None:
    """A tokenizer that can be loaded here (a folder, the embedded model, a hub id in the local cache),
    checked before a run opens: one line naming ``--tokenizer`` otherwise."""
    if is_embedded(source) or Path(str(source)).expanduser().exists():
        return
    if os.environ.get("HF_HUB_OFFLINE", "1").lower() in ("0", "false", "no", "off"):
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(str(source), "tokenizer_config.json"), str):
        return
    raise ConfigError(
        f"the long-context recipe counts tokens with the model's tokenizer, and {source!r} is not a folder "
        "nor a hub id in the local Hugging Face cache: give --tokenizer (a folder, a cached hub id, or "
        "'embedded')"
    )


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def model_context(path: str) -> int | None:
    """The context length a model's config declares (``max_position_embeddings`` or the like)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Tokens:
    """The model's tokenizer, loaded on first use: counts, chat counts and token chunks."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    @property
    def tokenizer(self) -> Any:
        return load_tokenizer(tokenizer_path(self.source))

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_chat(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of a whole conversation as the model reads it (its chat template, default system
        prompt included); a tokenizer without a template: the contents plus 4 tokens a message."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(list(messages), tokenize=False)
            return self.count(text)
        return sum(self.count(m["content"]) + 4 for m in messages)

    def split(self, text: str, size: int) -> list[str]:
        """``text`` cut into pieces of at most ``size`` tokens, at token boundaries (at a line break
        where the last quarter of a piece has one); the pieces, joined, are ``text``."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [a for a, _ in enc["offset_mapping"]]
        n = len(starts)
        pieces: list[str] = []
        i, begin = 0, 0
        while i < n:
            j = min(i + size, n)
            end = len(text) if j == n else max(starts[j], begin + 1)
            if j < n:
                window = starts[i + int(size * PREFER_BREAK_AFTER)] if size >= 4 else end
                for mark in ("\n\n", "\n"):
                    at = text.rfind(mark, max(window, begin), end)
                    if at >= 0:
                        end = at + len(mark)
                        break
                j = max(bisect.bisect_left(starts, end), i + 1)
            pieces.append(text[begin:end])
            begin, i = end, j
        if begin < len(text) and pieces:
            pieces[-1] += text[begin:]
        return [p for p in pieces if p] or [text]


@dataclass(frozen=True)
class Lengths:
    """The run's lengths in tokens: the model's context, the chunk size and the buckets (each an upper
    bound; a row lands in the smallest that holds it)."""

    context: int
    chunk: int
    buckets: tuple[int, ...]
    context_from: str = ""

    def bucket(self, tokens: int) -> int | None:
        return next((b for b in self.buckets if tokens <= b), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "context_length": self.context,
            "context_from": self.context_from,
            "chunk_tokens": self.chunk,
            "buckets": [label(b) for b in self.buckets],
        }


def label(tokens: int) -> str:
    """8192 -> '8K', 1536 -> '1536'."""
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def default_buckets(context: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, context // f) for f in BUCKET_FRACTIONS}))


def resolve_lengths(
    context_length: int,
    chunk_tokens: int,
    buckets: Sequence[int],
    *,
    engine_name: str,
    engine: Any,
    model: str | None,
    tokenizer: str | None,
) -> Lengths:
    """The lengths given, the others derived from the model's context (see the module's docstring)."""
    context, where = context_length, "--context-length"
    if not context and engine_name == "openai":
        inner = getattr(engine, "inner", engine)
        context, where = getattr(inner, "context_length", None) or 0, "the server's max_model_len"
    if not context and (is_embedded(model) or Path(str(model)).expanduser().exists()):
        context, where = model_context(tokenizer_path(model)) or 0, "the model's config"
    if not context and tokenizer is not None:
        context, where = model_context(tokenizer_path(tokenizer)) or 0, "the tokenizer's model config"
    if not context:
        raise ConfigError(f"cannot tell the context length of {model!r}: give --context-length")
    chunk = chunk_tokens or max(1, context // CHUNK_FRACTION)
    chosen = tuple(sorted(set(buckets))) if buckets else default_buckets(context)
    if chosen[0] < 1:
        raise ConfigError(f"buckets must be positive token counts, got {list(buckets)}")
    if chunk >= context:
        raise ConfigError(f"chunk_tokens ({chunk}) must be below the context length ({context})")
    return Lengths(context=context, chunk=chunk, buckets=chosen, context_from=where)


@dataclass
class LengthBuckets:
    """Every SFT row measured in the model's tokens (its chat template applied) and put in the smallest
    bucket that holds it: ``scores['tokens']``, ``scores['length_bucket']`` (the bucket's upper bound, in
    tokens: exported with the row) and ``meta['length_bucket']`` ('2K'). A row longer than the model's
    context is rejected 'exceeds_context'; one within it but longer than the largest bucket,
    'exceeds_buckets' (``meta['length_detail']`` says by how much)."""

    lengths: Lengths
    tokens: Tokens
    name: str = "length_buckets"

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        for rec in records:
            n = self.tokens.count_chat([{"role": m.role, "content": m.content} for m in rec.messages])
            rec.scores["tokens"] = float(n)
            bucket = self.lengths.bucket(n)
            if n > self.lengths.context:
                rec.meta["length_detail"] = f"{n:,} tokens > the context, {self.lengths.context:,}"
                rec.reject(self.name, "exceeds_context")
            elif bucket is None:
                rec.meta["length_detail"] = f"{n:,} tokens > the largest bucket, {self.lengths.buckets[-1]:,}"
                rec.reject(self.name, "exceeds_buckets")
            else:
                rec.scores["length_bucket"] = float(bucket)
                rec.meta["length_bucket"] = label(bucket)
                rec.keep(self.name)
        return records


def bucket_counts(store: Any, stage: str, lengths: Lengths) -> dict[str, Any]:
    """Kept rows per bucket (every bucket listed, empty ones as 0) and per task and bucket, and the
    rows rejected for length: what the data card and ``synth stats --json`` show (``length_buckets``)."""
    rows = store.query(
        "SELECT json_extract_string(data, '$.meta.task') AS task, "
        "json_extract_string(data, '$.meta.length_bucket') AS bucket, count(*) FROM records "
        "WHERE stage = ? AND kept GROUP BY ALL ORDER BY ALL",
        [stage],
    )
    buckets = {label(b): 0 for b in lengths.buckets}
    by_task: dict[str, dict[str, int]] = {}
    for task, bucket, n in rows:
        buckets[bucket] = buckets.get(bucket, 0) + n
        by_task.setdefault(task or "?", {})[bucket] = n
    rejected = dict(
        store.query(
            "SELECT reason, count(*) FROM records WHERE stage = ? AND NOT kept GROUP BY ALL ORDER BY ALL",
            [stage],
        )
    )
    return {**lengths.to_dict(), "rows": buckets, "by_task": by_task, "rejected": rejected}
