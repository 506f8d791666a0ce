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

# TRL's stepwise-supervision format (a process reward model's rows): the problem, its solution's steps
# and one label per step; ``soft_labels``: the share of rollouts from each step that reached the answer.
STEP_LABELS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("completions", pa.list_(pa.string())),
        pa.field("labels", pa.list_(pa.bool_())),
        pa.field("soft_labels", pa.list_(pa.float64())),
        pa.field("capability", pa.string()),
        pa.field("scores", pa.string()),
        pa.field("provenance", pa.string()),
    ]
)
# Tool-calling SFT rows in OpenAI's shape, as TRL's SFTTrainer reads them: messages with the
# assistant's ``tool_calls`` (arguments as JSON text) and ``tool`` turns' ``tool_call_id`` / ``name``,
# and ``tools``, the JSON list of function schemas the conversation may call (TRL parses the text).
TOOL_CALL_TYPE = pa.struct(
    [
        pa.field("id", pa.string()),
        pa.field("type", pa.string()),
        pa.field("function", pa.struct([pa.field("name", pa.string()), pa.field("arguments", pa.string())])),
    ]
)
TOOL_MESSAGE_TYPE = pa.struct(
    [
        pa.field("role", pa.string()),
        pa.field("content", pa.string()),
        pa.field("tool_calls", pa.list_(TOOL_CALL_TYPE)),  # null except on a calling assistant turn
        pa.field("tool_call_id", pa.string()),  # null except on a tool turn
        pa.field("name", pa.string()),  # the tool's name on a tool turn, else null
    ]
)
SFT_TOOLS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("messages", pa.list_(TOOL_MESSAGE_TYPE)),
        pa.field("tools", pa.string()),  # JSON list of {"type": "function", "function": {...}}
        pa.field("capability", pa.string()),
        pa.field("scores", pa.string()),
        pa.field("provenance", pa.string()),
    ]
)
# Configs a run adds to sft and preference when it declares such outputs (``Outputs.extra``).
EXTRA_CONFIGS: tuple[str, ...] = ("step_labels", "sft_tools")

SCHEMAS: dict[str, pa.Schema] = {
    "sft": SFT_SCHEMA,
    "preference": PREFERENCE_SCHEMA,
    "step_labels": STEP_LABELS_SCHEMA,
    "sft_tools": SFT_TOOLS_SCHEMA,
}
