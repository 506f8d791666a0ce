"""Export a run's kept records as a Hugging Face dataset (parquet shards + data card) and push it.

Layout written by :func:`export_dataset`::

    out_dir/
      README.md                              data card (YAML header the Hub reads + run report)
      .synth-export.json                     manifest: the run this folder is an export of
      sft/train-00000-of-00003.parquet       at most `shard_rows` rows per shard
      sft/train-00001-of-00003.parquet
      sft/train-00002-of-00003.parquet
      sft/test-00000-of-00001.parquet
      preference/train-00000-of-00001.parquet
      preference/test-00000-of-00001.parquet

``datasets.load_dataset(out_dir, "sft")`` / ``(out_dir, "preference")`` read it back (the card's
``configs:`` header maps each config to its shards), and so does :func:`load_export`, memory-mapped.
The column schema is fixed by :data:`SFT_SCHEMA` and :data:`PREFERENCE_SCHEMA`; the trainers consume
exactly these columns.

One concern per module: ``schema`` (columns), ``rows`` (record -> row), ``splits`` (train/test),
``card`` (README.md), ``writer`` (streaming shards), ``reader`` (reading back), ``hub`` (upload).
"""

from synth.export.card import CARD_TEMPLATE, CardFacts, RunSummary, render_card, size_category
from synth.export.hub import TOKEN_ENV_VARS, MissingTokenError, push_to_hub, resolve_token
from synth.export.reader import load_export, read_parquet
from synth.export.rows import capability, preference_row, sft_row
from synth.export.schema import (
    CONFIGS,
    MESSAGE_TYPE,
    MESSAGES_TYPE,
    PREFERENCE_SCHEMA,
    SCHEMAS,
    SFT_SCHEMA,
    SPLITS,
)
from synth.export.splits import Splitter, assign_splits, split_fraction
from synth.export.writer import (
    DEFAULT_SHARD_ROWS,
    MANIFEST,
    ExportTargetError,
    check_target,
    export_dataset,
    run_id_of,
    shard_name,
)

__all__ = [
    "CARD_TEMPLATE",
    "CONFIGS",
    "DEFAULT_SHARD_ROWS",
    "MANIFEST",
    "MESSAGES_TYPE",
    "MESSAGE_TYPE",
    "PREFERENCE_SCHEMA",
    "SCHEMAS",
    "SFT_SCHEMA",
    "SPLITS",
    "TOKEN_ENV_VARS",
    "CardFacts",
    "ExportTargetError",
    "MissingTokenError",
    "RunSummary",
    "Splitter",
    "assign_splits",
    "capability",
    "check_target",
    "export_dataset",
    "load_export",
    "preference_row",
    "push_to_hub",
    "read_parquet",
    "render_card",
    "resolve_token",
    "run_id_of",
    "sft_row",
    "shard_name",
    "size_category",
    "split_fraction",
]
