"""DeepSpeed for real: ``synth train sft|dpo`` under ``accelerate launch`` on 2 CPU processes (gloo)
with the shipped ZeRO configs trains the same model as one process with the same global batch.

One launch runs this file as its script (``__main__`` below): SFT with zero2.json, DPO with
zero2.json and SFT with zero3.json, each through the real CLI (``train.cli``), in one pair of
processes (start-up is most of a launch's time). Each process records what trained: DeepSpeed's
engine, its ZeRO stage, the group's size and backend, and the batches its rank saw. DeepSpeed
compiles a shared-memory comm op with g++ on its first run on a machine (50-70 s); it is cached under
``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR``), so later runs skip it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs"
SFT_STEPS, DPO_STEPS, LR = 4, 3, 1e-3
GLOBAL_BATCH = 4  # one process: 4 rows a step; two processes: 2 rows each


def _common(kind: str, data: Path, model: Path, out: Path, batch: int) -> list[str]:
    steps = SFT_STEPS if kind == "sft" else DPO_STEPS
    args = [kind, "--data", str(data), "--model", str(model), "--out", str(out), "--max-steps", str(steps),
            "--lr", str(LR), "--batch-size", str(batch), "--logging-steps", "1"]  # fmt: skip
    if kind == "dpo":
        args += ["--drop-strengths", ""]  # every toy pair trains
    return args


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from train.tiny import save_tiny_causal_lm, toy_preference_rows, toy_sft_rows, write_export

    root = tmp_path_factory.mktemp("ds")
    model = save_tiny_causal_lm(root / "model")
    data = write_export(
        root / "data", sft={"train": toy_sft_rows(32)}, preference={"train": toy_preference_rows(32)}
    )
    return root, data, model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same_training(single: Path, multi: Path, init: Path) -> tuple[float, float]:
    """(largest weight difference between the two runs, largest move of a weight from init)."""
    a, b, start = _weights(single), _weights(multi), _weights(init)
    common = set(a) & set(b)
    assert common >= set(start) - {"lm_head.weight"}, set(start) - common
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in common)
    moved = max((a[k].float() - start[k].float()).abs().max().item() for k in common)
    return diff, moved


@pytest.mark.slow
def test_zero2_and_zero3_on_two_cpu_processes_match_one_process(toy):
    import torch

    from synth.config import build
    from train.options import DPOOptions, SFTOptions

    root, data, model = toy
    jobs = [
        [*_common("sft", data, model, root / "sft_zero2", 2), "--deepspeed", str(CONFIGS / "zero2.json")],
        [*_common("dpo", data, model, root / "dpo_zero2", 2), "--deepspeed", str(CONFIGS / "zero2.json")],
        [*_common("sft", data, model, root / "sft_zero3", 2), "--deepspeed", str(CONFIGS / "zero3.json")],
    ]
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "DS_RECORD": str(root)}  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         __file__, json.dumps(jobs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    launch_s = time.monotonic() - t0

    # what trained in each process: DeepSpeed's engine at the config's stage, 2 gloo ranks, half the data
    for rank in (0, 1):
        seen = json.loads((root / f"record-{rank}.json").read_text())
        assert [(r["engine"], r["stage"]) for r in seen] == [
            ("DeepSpeedEngine", 2), ("DeepSpeedEngine", 2), ("DeepSpeedEngine", 3)
        ], seen  # fmt: skip
        assert {(r["world"], r["backend"], r["rank"]) for r in seen} == {(2, "gloo", rank)}
        assert [r["batches"] for r in seen] == [32 // GLOBAL_BATCH] * 3  # each rank: half of every step

    # one process, the same global batch and steps, no DeepSpeed (one torch thread, as each rank)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build(SFTOptions, _opts(_common("sft", data, model, root / "sft_single", GLOBAL_BATCH))).run()
        build(DPOOptions, _opts(_common("dpo", data, model, root / "dpo_single", GLOBAL_BATCH))).run()
    finally:
        torch.set_num_threads(threads)
    for single, multi in [
        ("sft_single", "sft_zero2"),
        ("dpo_single", "dpo_zero2"),
        ("sft_single", "sft_zero3"),
    ]:
        diff, moved = _same_training(root / single, root / multi, model)
        assert moved > 1e-3, (multi, moved)  # training moved the weights...
        assert diff < 1e-4, (multi, diff)  # ...the same way in both runs (fp32 sums in another order)
        loss = [
            json.loads((root / d / "metrics.json").read_text())["train"]["train_loss"]
            for d in (single, multi)
        ]
        assert loss[1] == pytest.approx(loss[0], abs=1e-3), (multi, loss)
    print(f"\naccelerate launch, 2 CPU processes, 3 trainings: {launch_s:.1f} s")


def _opts(args: list[str]) -> dict:
    """CLI arguments (``_common``) as option values."""
    it = iter(args[1:])
    out = {}
    for flag, value in zip(it, it, strict=True):
        key = flag.lstrip("-").replace("-", "_")
        out[key] = () if key == "drop_strengths" else value
    ints = {k: int(out[k]) for k in ("max_steps", "batch_size", "logging_steps")}
    return {**out, **ints, "lr": float(out["lr"])}


def test_dpo_refuses_zero3_before_loading_anything(tmp_path):
    from click.testing import CliRunner

    from train.cli import group

    result = CliRunner().invoke(
        group,
        [
            "dpo",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--deepspeed",
            str(CONFIGS / "zero3.json"),
        ],
    )
    assert result.exit_code == 2
    assert "error: deepspeed: DPO computes its reference log-probs" in result.output
    assert "zero2.json" in result.output


def _worker(jobs: list[list[str]]) -> None:
    """One process of the launch: run each job through the CLI; record what trained it."""
    import torch.distributed as dist
    import transformers

    from train.cli import group

    seen = []
    train = transformers.Trainer.train

    def recorded(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        engine = self.model_wrapped
        stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
        seen.append({"engine": type(engine).__name__, "stage": stage, "world": dist.get_world_size(),
                     "backend": dist.get_backend(), "rank": dist.get_rank(),
                     "batches": len(self.get_train_dataloader())})  # fmt: skip
        return out

    transformers.Trainer.train = recorded
    for args in jobs:
        group.main(args=args, standalone_mode=False)
    Path(os.environ["DS_RECORD"], f"record-{dist.get_rank()}.json").write_text(json.dumps(seen))
    # leave the group before the interpreter tears down: a rank that exits with gloo's / DeepSpeed's
    # comm threads still alive can abort in a C++ destructor ("terminate called without an active
    # exception", SIGABRT) after all its work is written; then skip that teardown altogether
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":  # `accelerate launch tests/test_deepspeed.py JOBS`
    _worker(json.loads(sys.argv[1]))
