"""`synth round` follows Llama 3: RM and SFT start from the pre-trained model every round, each of the
RM, SFT and DPO stages averages its variants (exactly), and rejection sampling defaults to the recipe's
K and keeps the best across rounds (Llama 2). Training and generation are stand-ins here (tiny random
checkpoints, distinct per run); the averaging and the wiring are the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines import round as round_mod
from pipelines.round import RoundConfig, run_rounds
from synth.prompt_sources import DB_NAME
from train.tiny import embedded_tokenizer, save_tiny_causal_lm


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def base(tok, tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("base") / "pretrained", tok, seed=100)


class Stand_ins:
    """Records every training run and sampling config; each training run writes its own tiny model."""

    def __init__(self, monkeypatch, tok):
        self.trained: list[dict] = []
        self.sampled: list = []
        self.tok = tok
        monkeypatch.setattr(round_mod, "_generate", lambda *a, **k: None)
        monkeypatch.setattr(round_mod, "_write_prompts", lambda runs, path: None)
        monkeypatch.setattr(round_mod, "_export_rows", lambda rows, kind, out: Path(out).mkdir(parents=True))
        monkeypatch.setattr(round_mod, "_train", self.train)
        monkeypatch.setattr("synth.recipes.rejection_sampling.run_sample", self.run_sample)

    def train(self, kind, data, out, model, overrides, seed):
        self.trained.append(
            {"kind": kind, "out": Path(out), "model": model, "overrides": overrides, "seed": seed}
        )
        save_tiny_causal_lm(out, self.tok, seed=len(self.trained))  # every run its own weights

    def run_sample(self, cfg):
        self.sampled.append(cfg)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / DB_NAME).touch()  # a run directory, as the recipe leaves it

        class Done:
            def close(self):
                pass

        return Done()

    def runs(self, kind: str, rnd: int) -> list[dict]:
        return [t for t in self.trained if t["kind"] == kind and t["out"].parent.name == f"round_{rnd}"]


def config(tmp_path, base, **kw) -> RoundConfig:
    path = tmp_path / "round.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "round"), "model": str(base), **kw}))
    return RoundConfig.from_yaml(path)


def exact_mean(dirs: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of the checkpoints' tensors, accumulated in fp32 as averaging specifies."""
    states = [load_file(d / "model.safetensors") for d in dirs]
    out = {}
    for key in states[0]:
        acc = torch.zeros(states[0][key].shape, dtype=torch.float32)
        for sd, w in zip(states, weights, strict=True):
            acc.add_(sd[key].float(), alpha=w)
        out[key] = acc.to(states[0][key].dtype)
    return out


def assert_exact_average(here: Path, stage: str, out: str, n: int, weights: list[float]) -> None:
    dirs = [here / f"{stage}_{i}" for i in range(n)]
    states = [load_file(d / "model.safetensors") for d in dirs]
    for a in range(n):  # real variants: every tensor differs, so copying one could not pass
        for b in range(a + 1, n):
            assert all(not torch.equal(states[a][k], states[b][k]) for k in states[a] if "norm" not in k)
    averaged = load_file(here / out / "model.safetensors")
    expected = exact_mean(dirs, weights)
    assert averaged.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(averaged[key], tensor), (stage, key)
        assert not torch.equal(averaged[key], states[0][key]) or "norm" in key


def test_rm_and_sft_start_from_the_pretrained_model_every_round(tmp_path, base, monkeypatch, tok):
    fake = Stand_ins(monkeypatch, tok)
    models = run_rounds(config(tmp_path, base, rounds=2))
    root = tmp_path / "round"
    assert models == [root / "round_1" / "model", root / "round_2" / "model"]
    for rnd in (1, 2):
        [rm] = fake.runs("rm", rnd)
        [sft] = fake.runs("sft", rnd)
        [dpo] = fake.runs("dpo", rnd)
        assert rm["model"] == str(base) and sft["model"] == str(base)  # Llama 3: not the last policy
        assert dpo["model"] == str(root / f"round_{rnd}" / "sft")
    # the policy that samples is the latest model
    assert [c.model for c in fake.sampled] == [str(base), str(root / "round_1" / "model")]
    assert "pre-trained model (RM and SFT start)" in (root / "round_2" / "ROUND.md").read_text()


def test_every_stage_averages_its_variants_exactly(tmp_path, base, monkeypatch, tok):
    fake = Stand_ins(monkeypatch, tok)
    cfg = config(
        tmp_path,
        base,
        rm={"max_steps": 2},
        sft={"max_steps": 3},
        rm_variants=[{}, {"learning_rate": 2e-5}],
        sft_variants=[{}, {"learning_rate": 3e-5}, {"max_steps": 5}],
        dpo_variants=[{}, {"beta": 0.2}],
        average_weights={"sft": [1, 1, 2]},
    )
    run_rounds(cfg)
    here = tmp_path / "round" / "round_1"
    steps = sorted(p.stem for p in (here / ".done").iterdir())
    for name in ("train_rm_0", "train_rm_1", "average_rm", "train_sft_0", "train_sft_2", "average_sft",
                 "train_dpo_0", "train_dpo_1", "average"):  # fmt: skip
        assert name in steps
    rms, sfts = fake.runs("rm", 1), fake.runs("sft", 1)
    assert [r["overrides"] for r in rms] == [{"max_steps": 2}, {"max_steps": 2, "learning_rate": 2e-5}]
    assert [r["overrides"] for r in sfts] == [{"max_steps": 3}, {"max_steps": 3, "learning_rate": 3e-5},
                                              {"max_steps": 5}]  # fmt: skip
    assert [r["seed"] for r in sfts] == [0, 1, 2]
    assert {r["model"] for r in rms + sfts} == {str(base)}
    assert [r["model"] for r in fake.runs("dpo", 1)] == [str(here / "sft")] * 2  # the averaged SFT model

    assert_exact_average(here, "rm", "rm", 2, [0.5, 0.5])
    assert_exact_average(here, "sft", "sft", 3, [0.25, 0.25, 0.5])
    assert_exact_average(here, "dpo", "model", 2, [0.5, 0.5])
    assert fake.sampled[0].reward_model == str(here / "rm")  # the averaged reward model scores

    # a resumed round redoes nothing
    before = len(fake.trained)
    run_rounds(cfg)
    assert len(fake.trained) == before


def test_variant_config_errors(tmp_path, base):
    with pytest.raises(ValueError, match="sft_variants needs at least one entry"):
        config(tmp_path, base, sft_variants=[])
    with pytest.raises(ValueError, match="one weight per RM variant"):
        config(tmp_path, base, rm_variants=[{}, {}], average_weights={"rm": [1]})
    with pytest.raises(ValueError, match="unknown stages \\['ppo'\\]"):
        config(tmp_path, base, average_weights={"ppo": [1]})
    with pytest.raises(ValueError, match="each rm_variants entry is a mapping"):
        config(tmp_path, base, rm_variants=[1])
    legacy = config(tmp_path, base, dpo_variants=[{}, {}], average_weights=[1, 3])  # a list: DPO's
    assert legacy.weights("dpo") == [1, 3] and legacy.weights("sft") is None


def test_rejection_sampling_defaults_to_the_recipe_and_keeps_the_best_across_rounds(
    tmp_path, base, monkeypatch, tok
):
    from synth.recipes.rejection_sampling import SampleConfig

    fake = Stand_ins(monkeypatch, tok)
    run_rounds(config(tmp_path, base, rounds=2))
    first, second = fake.sampled
    recipe_k = SampleConfig.__dataclass_fields__["k"].default
    assert recipe_k == 10 and first.k == second.k == recipe_k  # Llama 3: K in 10-30
    assert first.top_p == SampleConfig.__dataclass_fields__["top_p"].default == 1.0
    assert first.top_fraction == 0.25  # Llama 3's top quartile
    root = tmp_path / "round"
    assert first.keep_best_across_rounds is None  # nothing earlier to keep
    assert second.keep_best_across_rounds == str(root / "round_1" / "sample")  # Llama 2


def test_the_yaml_chooses_sampling(tmp_path, base, monkeypatch, tok):
    fake = Stand_ins(monkeypatch, tok)
    sample = {"k": 3, "top_fraction": 0.5, "temperature": 0.6, "keep_best_across_rounds": False}
    run_rounds(config(tmp_path, base, rounds=2, sample=sample))
    assert [(c.k, c.top_fraction, c.keep_best_across_rounds) for c in fake.sampled] == [(3, 0.5, None)] * 2
    assert fake.sampled[0].sampling().temperature == 0.6

    fake = Stand_ins(monkeypatch, tok)
    seed_rows = tmp_path / "earlier.jsonl"
    (tmp_path / "b").mkdir()
    run_rounds(config(tmp_path / "b", base, rounds=2, sample={"keep_best_across_rounds": str(seed_rows)}))
    assert [c.keep_best_across_rounds for c in fake.sampled] == [
        str(seed_rows),
        str(tmp_path / "b" / "round" / "round_1" / "sample"),
    ]
    with pytest.raises(ValueError, match="keep_best_across_rounds is true, false or a path"):
        config(tmp_path, base, sample={"keep_best_across_rounds": 3})


def test_the_demo_yaml_is_small_and_averages_every_stage():
    cfg = RoundConfig.from_yaml(Path(__file__).parents[1] / "pipelines" / "configs" / "round_demo.yaml")
    assert cfg.sample["k"] <= 4  # explicit and small: the recipe's default (10) is for real runs
    assert cfg.sample["keep_best_across_rounds"] is True
    assert len(cfg.sft_variants) > 1 and len(cfg.dpo_variants) > 1


def test_every_round_evaluates_its_own_model(tmp_path, base, monkeypatch, tok):
    """``evals: {math: ...}`` grades each round's averaged model on held-out problems (real hf
    engine on the tiny model, real grader); the metrics land in ``eval_math`` and ROUND.md."""
    Stand_ins(monkeypatch, tok)
    evaluated = []
    real = round_mod._evaluate
    monkeypatch.setattr(round_mod, "_evaluate", lambda *a: (evaluated.append(a[3]), real(*a))[1])
    with pytest.raises(ValueError, match="unknown evals \\['poetry'\\]"):
        config(tmp_path, base, evals={"poetry": {}})
    opts = {"k": 2, "max_tokens": 4, "limit": 2, "workers": 1}
    run_rounds(config(tmp_path, base, rounds=2, evals={"math": opts}))
    root = tmp_path / "round"
    assert evaluated == [root / "round_1" / "model", root / "round_2" / "model"]
    for rnd in (1, 2):
        here = root / f"round_{rnd}"
        metrics = json.loads((here / "eval_math" / "metrics.json").read_text())
        assert metrics["model"] == str(here / "model") and metrics["problems"] == 2
        assert 0.0 <= metrics["greedy_accuracy"] <= 1.0 and "maj@2" in metrics
        assert len(metrics["per_problem"]) == 2
        assert "## eval_math" in (here / "ROUND.md").read_text()


def test_each_round_is_evaluated_by_the_suite_next_to_the_previous_one(tmp_path, base, monkeypatch, tok):
    """``evals: {suite: ...}`` runs `synth eval --suite` on each round's model (real hf engine on the
    tiny model, real checkers); round 2's ROUND.md shows its numbers next to round 1's, and ROUNDS.md
    at the top has every metric by round, with a plot."""
    Stand_ins(monkeypatch, tok)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"engine": "hf", "checks": {
        "language": {"data": "pipelines/data/heldout/language.jsonl", "limit": 2, "max_tokens": 4},
        "long_context": {"data": "pipelines/data/heldout/long_context.jsonl", "limit": 1, "max_tokens": 4},
    }}))  # fmt: skip
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="unknown keys \\['k'\\]"):
        run_rounds(config(tmp_path / "bad", base, evals={"suite": {"path": str(suite), "k": 1}}))
    run_rounds(config(tmp_path, base, rounds=2, evals={"suite": {"path": str(suite)}}))
    root = tmp_path / "round"
    for rnd in (1, 2):
        metrics = json.loads((root / f"round_{rnd}" / "eval_suite" / "metrics.json").read_text())
        assert set(metrics) == {"language", "long_context"}
        assert metrics["language"]["n"] == 2 and metrics["long_context"]["n"] == 1
        assert 0.0 <= metrics["language"]["match_rate"] <= 1.0
    first = (root / "round_1" / "ROUND.md").read_text()
    second = (root / "round_2" / "ROUND.md").read_text()
    assert "## eval_suite: round 1 (the first)" in first
    assert "## eval_suite: round 2 vs round 1" in second
    m1 = json.loads((root / "round_1" / "eval_suite" / "metrics.json").read_text())
    m2 = json.loads((root / "round_2" / "eval_suite" / "metrics.json").read_text())
    a, b = m1["language"]["match_rate"], m2["language"]["match_rate"]
    assert f"| language | match_rate | {a:.4f} | {b:.4f} | {b - a:+.4f} | 2 |" in second
    rounds = (root / "ROUNDS.md").read_text()
    assert "| metric | round 1 | round 2 |" in rounds
    assert f"| language/match_rate | {a:.4f} | {b:.4f} |" in rounds
    assert (root / "rounds.png").stat().st_size > 1000


def test_the_mix_demo_yaml_has_two_capabilities_the_mix_and_the_suite(tmp_path):
    from synth.config import build
    from synth.recipes.mix import MixConfig

    cfg = RoundConfig.from_yaml(Path(__file__).parents[1] / "pipelines" / "configs" / "round_mix_demo.yaml")
    assert set(cfg.recipes) == {"general", "multilingual"} and cfg.rounds == 2
    assert set(cfg.evals) == {"suite"} and cfg.mix is not None
    mix = build(MixConfig, {"out": "x", "sources": ["a", "b"]}, cfg.mix, where="mix")
    assert set(mix.proportions) == {"general", "multilingual"}
    with pytest.raises(ValueError, match="mix.sources and mix.out are set by the round"):
        config(tmp_path, Path("m"), mix={"sources": ["a"]})
