"""The fixed column layout of an export: what the trainers and the Hub dataset viewer read.

Scores and provenance are JSON text rather than structs: their keys differ from run to run, and a
struct column would give every export its own schema.
"""

from __future__ import annotations

import pyarrow as pa

CONFIGS: tuple[str, ...] = ("sft", "preference")
SPLITS: tuple[str, ...] = ("train", "test")

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

SFT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("messages", MESSAGES_TYPE),
        pa.field("capability", pa.string()),
        pa.field("scores", pa.string()),  # JSON object name -> float
        pa.field("provenance", pa.string()),  # JSON of Provenance, or "{}"
    ]
)

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("prompt", MESSAGES_TYPE),
        pa.field("chosen", MESSAGES_TYPE),  # one assistant message
        pa.field("rejected", MESSAGES_TYPE),  # one assistant message
        pa.field("edited", MESSAGES_TYPE),  # one assistant message, or [] when absent
        pa.field("strength", pa.string()),  # nullable
        pa.field("chosen_score", pa.float64()),  # nullable
        pa.field("rejected_score", pa.float64()),  # nullable
        pa.field("capability", pa.string()),
        pa.field("scores", pa.string()),
        pa.field("provenance", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"sft": SFT_SCHEMA, "preference": PREFERENCE_SCHEMA}
