"""Each loss against a value computed by hand on a tiny batch."""

from __future__ import annotations

import math

import datasets
import pytest
import torch

from synth.chat import encode
from train.config import DPOConfig, RMConfig, SFTConfig
from train.dpo import REF_MODEL, DPOCollator, DPOTrainer, pair_logps, reference_fingerprint
from train.losses import bradley_terry_loss, dpo_loss, length_normalised_nll
from train.rm import RewardCollator, RMTrainer, sequence_rewards
from train.sft import PackedSFTCollator, SFTTrainer
from train.tiny import (
    embedded_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
    toy_preference_rows,
    toy_sft_rows,
)


def nls(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def config(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), report_to=[], disable_tqdm=True, **kw)


def manual_logps(model, ids: list[int], mask: list[int]) -> tuple[float, int, float]:
    """Sum of log p over masked tokens, their count and the summed NLL, one unpacked forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    total = sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])
    return total, sum(mask[1:]), -total


def test_bradley_terry_margin_by_hand():
    rc, rr, m = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([0.66, 0.0])
    expected = (nls(2.0 - 1.0 - 0.66) + nls(0.5 - 1.0 - 0.0)) / 2
    assert bradley_terry_loss(rc, rr, m).item() == pytest.approx(expected, rel=1e-6)
    assert bradley_terry_loss(rc, rr).item() == pytest.approx((nls(1.0) + nls(-0.5)) / 2)


@pytest.mark.parametrize(
    "margin, margins",
    [
        ("none", [0.0, 0.0, 0.0]),
        ("small", [1.0, 2 / 3, 1 / 3]),
        ("large", [3.0, 2.0, 1.0]),
        (None, [0.0] * 3),
    ],
)
def test_rm_trainer_applies_strength_margin(tok, tmp_path, margin, margins):
    """Llama 3: no margin by default (None: the default config); Llama 2's small and large tables."""
    rows = toy_preference_rows(3, edited_every=0)  # significantly_better, better, slightly_better
    model = tiny_reward_model(tok).eval()
    args = config(RMConfig, tmp_path, **({"margin": margin} if margin else {}))
    trainer = RMTrainer(model, args, datasets.Dataset.from_list(rows), tok)
    batch = RewardCollator()(list(trainer.train_dataset))
    with torch.no_grad():
        r = sequence_rewards(model, batch).tolist()  # [c0, r0, c1, r1, c2, r2]
        loss = trainer.compute_loss(model, batch).item()
    expected = sum(nls(r[2 * i] - r[2 * i + 1] - margins[i]) for i in range(3)) / 3
    assert loss == pytest.approx(expected, rel=1e-5)


def test_rm_three_responses_train_on_all_pairs(tok, tmp_path):
    rows = toy_preference_rows(2, edited_every=1)[1:]  # edited + chosen + rejected, "better"
    model = tiny_reward_model(tok).eval()
    args = config(RMConfig, tmp_path, margin="small")
    trainer = RMTrainer(model, args, datasets.Dataset.from_list(rows), tok)
    row = trainer.train_dataset[0]
    assert row["pair_label"] == ["edited>chosen", "edited>rejected", "chosen>rejected"]
    assert row["pair_margin"] == pytest.approx([0.0, 2 / 3, 2 / 3])
    batch = RewardCollator()(list(trainer.train_dataset))
    with torch.no_grad():
        e, c, r = sequence_rewards(model, batch).tolist()
        loss = trainer.compute_loss(model, batch).item()
    expected = (nls(e - c) + nls(e - r - 2 / 3) + nls(c - r - 2 / 3)) / 3
    assert loss == pytest.approx(expected, rel=1e-5)


def test_rm_concatenated_row_gives_separate_row_rewards(tok, tmp_path):
    """Llama 3's one-row encoding reads the same rewards as separate rows (and as HF's own
    sequence-classification pooling at inference)."""
    rows = toy_preference_rows(4, edited_every=2)
    model = tiny_reward_model(tok).eval()
    trainer = RMTrainer(model, config(RMConfig, tmp_path), datasets.Dataset.from_list(rows), tok)
    data = list(trainer.train_dataset)
    with torch.no_grad():
        separate = sequence_rewards(model, RewardCollator(False)(data))
        concat = sequence_rewards(model, RewardCollator(True)(data))
        pooled = [
            model(input_ids=torch.tensor([r["prompt_ids"] + resp])).logits.item()
            for r in data
            for resp in r["response_ids"]
        ]
    assert len(separate) == 2 + 3 + 3  # rows 0 and 2 have an edited response; row 3 is dropped
    torch.testing.assert_close(concat, separate, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(separate, torch.tensor(pooled), atol=1e-5, rtol=1e-4)


def test_sft_loss_is_ce_on_assistant_tokens(tok, tmp_path):
    rows = toy_sft_rows(3)  # row 0 has two assistant turns
    model = tiny_causal_lm(tok).eval()
    trainer = SFTTrainer(model, config(SFTConfig, tmp_path), datasets.Dataset.from_list(rows), tok)
    total_nll, count = 0.0, 0
    for row in rows:
        enc = encode(tok, row["messages"], "sft")
        _, n, nll = manual_logps(model, enc.input_ids, enc.mask)
        total_nll, count = total_nll + nll, count + n
    batch = PackedSFTCollator()(list(trainer.train_dataset))
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
    answers = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert len(answers) == 4  # every assistant turn counts: content tokens + <|im_end|>
    assert count == sum(len(tok(a, add_special_tokens=False).input_ids) + 1 for a in answers)
    assert loss == pytest.approx(total_nll / count, rel=1e-5)


def test_dpo_loss_masks_formatting_and_adds_nll(tok, tmp_path):
    rows = toy_preference_rows(2, edited_every=0)
    rows[0]["ref_chosen_logps"], rows[0]["ref_rejected_logps"] = -40.0, -20.0
    rows[1]["ref_chosen_logps"], rows[1]["ref_rejected_logps"] = -35.0, -25.0
    model = tiny_causal_lm(tok).eval()
    args = config(DPOConfig, tmp_path, beta=0.1, nll_weight=0.2)
    for row in rows:  # computed by this very reference, as its fingerprint records
        row[REF_MODEL] = reference_fingerprint(model, tok, args)
    trainer = DPOTrainer(model, args, datasets.Dataset.from_list(rows), tok)
    assert trainer.train_dataset["ref_chosen_logps"] == [-40.0, -35.0]  # cached, not recomputed

    dpo_terms, nll_terms = [], []
    for row in rows:
        c = encode(tok, [*row["prompt"], *row["chosen"]], "dpo")
        r = encode(tok, [*row["prompt"], *row["rejected"]], "dpo")
        assert (
            tok.decode([t for t, m in zip(c.input_ids, c.mask, strict=True) if m])
            == (row["chosen"][0]["content"])
        )
        pc, nc, _ = manual_logps(model, c.input_ids, c.mask)
        pr, _, _ = manual_logps(model, r.input_ids, r.mask)
        margin = 0.1 * ((pc - row["ref_chosen_logps"]) - (pr - row["ref_rejected_logps"]))
        dpo_terms.append(nls(margin))
        nll_terms.append(-pc / nc)
    expected = sum(dpo_terms) / 2 + 0.2 * sum(nll_terms) / 2
    with torch.no_grad():
        loss = trainer.compute_loss(model, DPOCollator()(list(trainer.train_dataset))).item()
    assert loss == pytest.approx(expected, rel=1e-5)

    args.nll_weight = 0.0
    with torch.no_grad():
        loss = trainer.compute_loss(model, DPOCollator()(list(trainer.train_dataset))).item()
    assert loss == pytest.approx(sum(dpo_terms) / 2, rel=1e-5)


def test_dpo_reference_pass_is_the_initial_policy(tok, tmp_path):
    rows = toy_preference_rows(5, edited_every=0)
    model = tiny_causal_lm(tok)
    trainer = DPOTrainer(model, config(DPOConfig, tmp_path), datasets.Dataset.from_list(rows), tok)
    data = list(trainer.train_dataset)
    assert len(data) == 3  # Llama 3: the slightly_better and marginally_better rows are dropped
    assert [r["strength"] for r in toy_preference_rows(5)][2:4] == ["slightly_better", "marginally_better"]
    batch = DPOCollator()(data)
    with torch.no_grad():
        out = pair_logps(model.eval(), batch)
        loss = trainer.compute_loss(model, batch).item()
    torch.testing.assert_close(out["chosen"], batch["ref_chosen_logps"])
    torch.testing.assert_close(out["rejected"], batch["ref_rejected_logps"])
    nll = length_normalised_nll(out["chosen"], out["chosen_tokens"]).item()
    assert loss == pytest.approx(math.log(2) + 0.2 * nll, rel=1e-5)  # policy == reference


def test_dpo_recomputes_reference_logps_of_another_or_unknown_model(tok, tmp_path):
    """Cached ref_* columns are used only when their recorded fingerprint is this reference's."""
    rows = toy_preference_rows(2, edited_every=0)
    model = tiny_causal_lm(tok).eval()
    args = config(DPOConfig, tmp_path)
    mine = reference_fingerprint(model, tok, args)
    other = reference_fingerprint(tiny_causal_lm(tok, seed=1), tok, args)
    assert mine.startswith("sha256:") and other != mine
    assert reference_fingerprint(model, tok, config(DPOConfig, tmp_path, max_length=64)) != mine
    assert reference_fingerprint(model, tok, args) == mine  # deterministic
    with torch.no_grad():
        true = pair_logps(
            model, DPOCollator()(list(DPOTrainer.tokenize(datasets.Dataset.from_list(rows), tok, args)))
        )
    stale = [{**r, "ref_chosen_logps": -40.0, "ref_rejected_logps": -20.0} for r in rows]
    for recorded, kept in ((None, False), (other, False), (mine, True)):
        given = [{**r, REF_MODEL: recorded} for r in stale] if recorded else stale
        trainer = DPOTrainer(model, args, datasets.Dataset.from_list(given), tok)
        ds = trainer.train_dataset
        assert ds[REF_MODEL] == [mine, mine]  # recorded with the columns
        if kept:
            assert ds["ref_chosen_logps"] == [-40.0, -40.0]
        else:
            torch.testing.assert_close(torch.tensor(ds["ref_chosen_logps"]), true["chosen"])
            torch.testing.assert_close(torch.tensor(ds["ref_rejected_logps"]), true["rejected"])


def test_dpo_loss_function_by_hand():
    loss, cr, rr = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.5
    )
    assert loss.item() == pytest.approx(nls(0.5 * (1.0 + 1.0)))
    assert (cr.item(), rr.item()) == pytest.approx((0.5, -0.5))
    nll = length_normalised_nll(torch.tensor([-6.0, -2.0]), torch.tensor([3.0, 4.0]))
    assert nll.item() == pytest.approx((2.0 + 0.5) / 2)
