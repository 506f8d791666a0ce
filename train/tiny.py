"""Tiny random Llama models and toy exported datasets, for tests and the benchmark.

The models take the embedded model's tokenizer (so chat templates and masks are the real ones)
with 64 hidden units and 2 layers: a training step takes well under a second on a laptop CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from synth.engines.embedded import embedded_model_path

README = """---
configs:
{configs}
---
# toy synth export
"""
CONFIG = "- config_name: {name}\n  data_files:\n{files}"
SPLIT = "  - split: {split}\n    path: {name}/{split}-*.parquet"


def embedded_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path())


def tiny_config(tokenizer, **overrides) -> LlamaConfig:
    kw = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return LlamaConfig(**{**kw, **overrides})


def tiny_causal_lm(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(tokenizer))


def tiny_reward_model(tokenizer, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1))


def save_tiny_causal_lm(path: str | Path, tokenizer=None, seed: int = 0) -> Path:
    """A tiny causal LM folder with tokenizer, as ``--model`` accepts."""
    tokenizer = tokenizer or embedded_tokenizer()
    tiny_causal_lm(tokenizer, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


TOPICS = ["cats", "rain", "tea", "maps", "bread", "stars", "rivers", "clocks", "music", "trees"]
STRENGTHS = ["significantly_better", "better", "slightly_better", "marginally_better"]


def toy_preference_rows(n: int, seed: int = 0, edited_every: int = 3) -> list[dict]:
    """Learnable preferences: the chosen answer is polite, the rejected one curt."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        extra = f" {rng.randint(0, 999)}"
        polite = f"Thank you for asking! Here is a kind note about {topic}{extra}. Have a lovely day!"
        curt = f"No. {topic}{extra}. Go away."
        edited = f"Thank you so much for asking! A careful, kind note about {topic}{extra}."
        rows.append(
            {
                "id": f"p{seed}-{i}",
                "prompt": [_msg("user", f"Tell me about {topic}{extra}.")],
                "chosen": [_msg("assistant", polite)],
                "rejected": [_msg("assistant", curt)],
                "edited": [_msg("assistant", edited)] if edited_every and i % edited_every == 0 else [],
                "strength": STRENGTHS[i % len(STRENGTHS)],
                "chosen_score": 4.0,
                "rejected_score": 1.0,
                "capability": "general",
                "scores": "{}",
                "provenance": "{}",
            }
        )
    return rows


def toy_sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Conversations with a fixed answer pattern; every third has two assistant turns."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        messages = [
            _msg("system", "You are terse."),
            _msg("user", f"One word for {topic}?"),
            _msg("assistant", f"{topic.upper()} indeed."),
        ]
        if i % 3 == 0:
            messages += [_msg("user", "Again?"), _msg("assistant", f"{topic.upper()} again.")]
        rows.append(
            {
                "id": f"s{seed}-{i}",
                "messages": messages,
                "capability": "general",
                "scores": "{}",
                "provenance": "{}",
            }
        )
    return rows


def write_export(
    root: str | Path,
    sft: dict[str, list[dict]] | None = None,
    preference: dict[str, list[dict]] | None = None,
    readme: bool = True,
) -> Path:
    """A dataset folder shaped like ``synth export``'s: ``<config>/<split>-00000-of-00001.parquet``
    (+ a README with the ``configs:`` header so ``load_dataset(root, config)`` works)."""
    root = Path(root)
    configs = []
    for name, splits in (("sft", sft), ("preference", preference)):
        if not splits:
            continue
        (root / name).mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            path = root / name / f"{split}-00000-of-00001.parquet"
            datasets.Dataset.from_list(rows).to_parquet(str(path))
        files = "\n".join(SPLIT.format(split=split, name=name) for split in splits)
        configs.append(CONFIG.format(name=name, files=files))
    if readme:
        (root / "README.md").write_text(README.format(configs="\n".join(configs)), encoding="utf-8")
    return root
