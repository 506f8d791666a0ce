"""Each trainer moves a tiny model the intended way on a learnable toy task."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from train.config import DPOConfig, RMConfig, SFTConfig
from train.dpo import DPOCollator, DPOTrainer, pair_logps
from train.rm import RMTrainer
from train.sft import SFTTrainer, response_logprob
from train.tiny import (
    embedded_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
    toy_preference_rows,
    toy_sft_rows,
)


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


def config(cls, tmp_path, **kw):
    defaults = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "logging_steps": 5}
    return cls(output_dir=str(tmp_path), disable_tqdm=True, **{**defaults, **kw})


def ds(rows):
    return datasets.Dataset.from_list(rows)


@pytest.mark.slow
@pytest.mark.parametrize("concat", [False, True])
def test_reward_model_learns_politeness(tok, tmp_path, concat):
    model = tiny_reward_model(tok)
    args = config(RMConfig, tmp_path, max_steps=30, concat_responses=concat, report_to=[])
    trainer = RMTrainer(model, args, ds(toy_preference_rows(64)), tok)
    held_out = ds(toy_preference_rows(24, seed=1))
    before = trainer.pairwise_accuracy(held_out)["overall"]["accuracy"]
    trainer.train()
    metrics = trainer.pairwise_accuracy(held_out)
    assert metrics["overall"]["pairs"] == 24 + 8 * 2  # every strength kept for evaluation
    assert metrics["overall"]["accuracy"] >= 0.85 > before
    assert set(metrics) >= {"significantly_better", "better", "marginally_better", "edited pairs"}


@pytest.mark.slow
def test_sft_raises_target_logprob_and_saves(tok, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = tiny_causal_lm(tok)
    train_rows, test_rows = toy_sft_rows(32), toy_sft_rows(4, seed=1)
    target = test_rows[0]["messages"]
    before = response_logprob(model.eval(), tok, target)
    args = config(SFTConfig, tmp_path, max_steps=25, learning_rate=5e-3, report_to=["tensorboard"])
    trainer = SFTTrainer(model, args, ds(train_rows), tok, eval_dataset=ds(test_rows))
    eval_before = trainer.evaluate()["eval_loss"]  # before train(): still logs under tmp_path
    trainer.train()
    assert response_logprob(model.eval(), tok, target) > before + 2.0
    assert trainer.evaluate()["eval_loss"] < eval_before - 2.0

    trainer.save_model(str(tmp_path / "model"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert response_logprob(reloaded, tok, target) == pytest.approx(
        response_logprob(model, tok, target), abs=1e-4
    )
    assert list(tmp_path.glob("runs/*/events.out.tfevents.*")), "no TensorBoard event file"
    assert not list(cwd.iterdir()), "logged outside output_dir"


@pytest.mark.slow
def test_dpo_raises_chosen_over_rejected(tok, tmp_path):
    model = tiny_causal_lm(tok)
    args = config(DPOConfig, tmp_path, max_steps=8, learning_rate=2e-3, report_to=[])
    trainer = DPOTrainer(model, args, ds(toy_preference_rows(32, edited_every=0)), tok)
    held_out = DPOTrainer.tokenize(ds(toy_preference_rows(16, seed=1, edited_every=0)), tok, args)
    batch = DPOCollator()(list(held_out))

    def gap():
        with torch.no_grad():
            out = pair_logps(model.eval(), batch)
        return out["chosen"], out["rejected"]

    chosen0, rejected0 = gap()
    trainer.train()
    chosen1, rejected1 = gap()
    # the implicit reward margin grows on unseen pairs, and the NLL term keeps chosen likely
    gain = ((chosen1 - chosen0) - (rejected1 - rejected0)).mean()
    assert gain > 5.0
    assert (chosen1 > chosen0).all()
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert logged and logged[-1]["rewards/margins"] > 0


@pytest.mark.parametrize("kind", ["rm", "sft", "dpo"])
def test_gradient_checkpointing_step_and_reload(tok, tmp_path, kind):
    kw = {"max_steps": 1, "activation_checkpointing": True, "report_to": [], "learning_rate": 1e-2}
    if kind == "rm":
        model, data = tiny_reward_model(tok), ds(toy_preference_rows(4))
        trainer = RMTrainer(model, config(RMConfig, tmp_path, **kw), data, tok)
        loader = AutoModelForSequenceClassification
    elif kind == "sft":
        model, data = tiny_causal_lm(tok), ds(toy_sft_rows(4))
        trainer = SFTTrainer(model, config(SFTConfig, tmp_path, **kw), data, tok)
        loader = AutoModelForCausalLM
    else:
        model, data = tiny_causal_lm(tok), ds(toy_preference_rows(4))
        trainer = DPOTrainer(model, config(DPOConfig, tmp_path, **kw), data, tok)
        loader = AutoModelForCausalLM
    start = {k: v.clone() for k, v in model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(start[k], v) for k, v in model.named_parameters())
    trainer.save_model(str(tmp_path / "out"))
    reloaded = loader.from_pretrained(tmp_path / "out")
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])
