"""Seconds per training step: our SFT / DPO trainers vs TRL's plain SFTTrainer / DPOTrainer.

Same model weights, same batch (``--batch-size`` toy rows, every step), same optimizer settings;
the first ``--warmup`` steps (optimizer state allocation) are not counted. Our DPO step needs no
reference forward (the reference log-probs are computed once up front; that pass is timed and
printed separately); TRL's default DPO runs the reference model every step.

    .venv/bin/python benchmarks/train_step.py --model embedded --steps 5
    .venv/bin/python benchmarks/train_step.py --model tiny --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import datasets
import torch
import trl
from transformers import AutoModelForCausalLM, TrainerCallback

from synth.engines.embedded import embedded_model_path
from train.config import DPOConfig, SFTConfig, bf16_available
from train.dpo import DPOTrainer
from train.sft import SFTTrainer
from train.tiny import embedded_tokenizer, tiny_causal_lm, toy_preference_rows, toy_sft_rows


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def fresh_model(kind: str, tok):
    if kind == "tiny":
        return tiny_causal_lm(tok, seed=0)
    return AutoModelForCausalLM.from_pretrained(embedded_model_path())


def common(out: str, steps: int, batch: int) -> dict:
    return {
        "output_dir": out,
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": 1e-5,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1000,
        "disable_tqdm": True,
        "seed": 0,
        "max_length": 512,
        "bf16": bf16_available(),  # TRL defaults to bf16, which a CPU cannot do
    }


def timed(trainer, warmup: int) -> list[float]:
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--only", choices=["sft", "dpo"], help="benchmark one recipe only")
    opts = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    tok = embedded_tokenizer()
    n = opts.warmup + opts.steps
    sft_rows = toy_sft_rows(opts.batch_size)
    pref_rows = toy_preference_rows(opts.batch_size, edited_every=0)
    for row in pref_rows:
        row["strength"] = "better"  # keep every row: same batch for both trainers
    sft_ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in sft_rows])
    pref_ds = datasets.Dataset.from_list(
        [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pref_rows]
    )
    results = {}
    with tempfile.TemporaryDirectory() as out:
        base = common(out, n, opts.batch_size)

        if opts.only != "dpo":
            ours = SFTTrainer(fresh_model(opts.model, tok), SFTConfig(**base), sft_ds, tok)
            results["sft ours"] = timed(ours, opts.warmup)
            theirs = trl.SFTTrainer(
                fresh_model(opts.model, tok),
                args=trl.SFTConfig(**base),
                train_dataset=sft_ds,
                processing_class=tok,
            )
            results["sft trl"] = timed(theirs, opts.warmup)
        if opts.only != "sft":
            start = time.perf_counter()
            ours = DPOTrainer(fresh_model(opts.model, tok), DPOConfig(**base), pref_ds, tok)
            ref_pass = time.perf_counter() - start
            results["dpo ours"] = timed(ours, opts.warmup)
            theirs = trl.DPOTrainer(
                fresh_model(opts.model, tok),
                ref_model=fresh_model(opts.model, tok),
                args=trl.DPOConfig(**base, beta=0.1),
                train_dataset=pref_ds,
                processing_class=tok,
            )
            results["dpo trl"] = timed(theirs, opts.warmup)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"model={opts.model} batch={opts.batch_size} steps={opts.steps} (+{opts.warmup} warmup)")
    print(f"{'trainer':<10} {'median s/step':>14} {'min':>8} {'max':>8}")
    for k, v in results.items():
        print(f"{k:<10} {med[k]:>14.3f} {min(v):>8.3f} {max(v):>8.3f}")
    for recipe in ("sft", "dpo"):
        if f"{recipe} ours" in med:
            ratio = med[f"{recipe} ours"] / med[f"{recipe} trl"]
            print(f"{recipe} ours/trl = {ratio:.2f}")
    if "dpo ours" in med:
        print(f"(our DPO setup incl. one-off reference pass over {len(pref_ds)} pairs: {ref_pass:.2f} s)")


if __name__ == "__main__":
    main()
