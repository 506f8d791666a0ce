"""The installed transformers against the two bugs the version floor in pyproject.toml excludes.

- Packed rows must not attend across documents: a packed SFT batch gives each conversation the
  same log-probs as running it alone (transformers builds the block-diagonal mask from restarting
  ``position_ids`` since 4.54; before, sdpa/eager attended across the whole row).
- Gradient accumulation must not scale the loss twice: two micro-batches of two rows take the
  same optimizer step as one batch of four (token-weighted mean over all micro-batches).
"""

from __future__ import annotations

import datasets
import pytest
import torch

from synth.chat import encode
from train.config import SFTConfig
from train.packing import pack
from train.sft import SFTTrainer
from train.tiny import embedded_tokenizer, tiny_causal_lm, toy_sft_rows


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def test_packed_documents_do_not_attend_to_each_other(tok):
    model = tiny_causal_lm(tok).eval()
    encs = [encode(tok, r["messages"], "sft") for r in toy_sft_rows(3)]
    batch = pack([(e.input_ids, e.mask) for e in encs])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        start = 0
        for e in encs:
            alone = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            part = packed.logits[0, start : start + len(e.input_ids)]
            torch.testing.assert_close(part, alone, atol=1e-4, rtol=1e-4)
            start += len(e.input_ids)
    # the check can fail: without restarting positions the later documents see the earlier ones
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    second = slice(len(encs[0].input_ids), len(encs[0].input_ids) + len(encs[1].input_ids))
    assert not torch.allclose(flat[second], packed.logits[0, second], atol=1e-4)


def _one_step(tok, tmp_path, batch_size: int, accum: int) -> dict[str, torch.Tensor]:
    model = tiny_causal_lm(tok)
    args = SFTConfig(
        output_dir=str(tmp_path / f"b{batch_size}a{accum}"),
        report_to=[],
        disable_tqdm=True,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accum,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        seed=0,
        use_cpu=True,
    )
    rows = datasets.Dataset.from_list(toy_sft_rows(4))
    SFTTrainer(model, args, rows, tok).train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_takes_the_same_step(tok, tmp_path):
    start = tiny_causal_lm(tok).state_dict()
    whole = _one_step(tok, tmp_path, batch_size=4, accum=1)
    accumulated = _one_step(tok, tmp_path, batch_size=2, accum=2)
    moved = [k for k in whole if not torch.equal(whole[k], start[k])]
    assert moved, "the step changed no weight"
    for k in moved:
        torch.testing.assert_close(accumulated[k], whole[k], atol=1e-5, rtol=1e-4)
