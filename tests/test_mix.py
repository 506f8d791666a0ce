"""The data mix: how many rows each capability keeps, which ones, and what the card reports."""

import json

from synth.export.mix_card import mix_report, mix_section
from synth.pipeline import Run
from synth.records import Provenance, SFTRecord
from synth.stages.mix import TABLE_7, MixSelect, plan_mix, rank_of


def row(i, cap, quality=0.5, difficulty=0.5):
    return SFTRecord(
        id=f"{cap}{i}",
        messages=[{"role": "user", "content": f"q {cap} {i}"}, {"role": "assistant", "content": f"a {i}"}],
        provenance=Provenance(capability=cap),
        scores={"quality": quality, "difficulty": difficulty},
    )


def test_plan_meets_the_proportions_with_the_scarcest_capability_setting_the_total():
    assert plan_mix({"general": 100, "code": 10}, {"general": 1, "code": 1}) == {"general": 10, "code": 10}
    assert plan_mix({"general": 100, "code": 10}, {"general": 3, "code": 1}) == {"general": 30, "code": 10}
    # an asked total, each share capped at what the capability has
    asked = plan_mix({"general": 100, "code": 10}, {"general": 1, "code": 1}, total=40)
    assert asked == {"general": 20, "code": 10}
    # Table 7 with two capabilities present: the absent ones get 0, the others keep their ratio
    plan = plan_mix({"general": 100, "code": 10}, TABLE_7)
    assert plan["code"] == 10 and plan["general"] == round(10 / 14.89 * 52.66) and plan["tools"] == 0
    assert plan_mix({}, {"general": 1}) == {"general": 0}


def test_rank_is_quality_times_difficulty_and_a_missing_score_counts_one():
    assert rank_of({"quality": 0.5, "difficulty": 0.4}) == 0.2
    assert rank_of({"quality": 0.5}) == 0.5 and rank_of({}) == 1.0


def test_mix_keeps_each_capabilitys_best_rows_and_says_why_it_drops_the_others(tmp_path):
    rows = [row(i, "general", quality=i / 10) for i in range(10)]
    rows += [row(i, "code", quality=1.0, difficulty=(i + 1) / 4) for i in range(4)]
    rows += [row(0, "tools")]
    run = Run(tmp_path, config={"recipe": "mix", "proportions": {"general": 2, "code": 1}})
    src = run.source("source", rows)
    out = run.map(MixSelect({"general": 2, "code": 1}), src, batch_size=3)
    kept = {r.id for r in run.store.iter_records(out.stages, kept=True)}
    # code has 4 rows at share 1/3: total 12, general keeps its best 8 (quality 0.2 ... 0.9)
    assert kept == {f"general{i}" for i in range(2, 10)} | {f"code{i}" for i in range(4)}
    reasons = {f["stage"]: f["reasons"] for f in run.store.funnel()}["mix"]
    assert reasons == {"over_mix_share": 2, "not_in_mix": 1}
    report = mix_report(run.store)
    by_cap = {c["capability"]: c for c in report["capabilities"]}
    assert report["total"] == 12
    assert by_cap["general"]["rows"] == 8 and by_cap["general"]["available"] == 10
    assert by_cap["general"]["asked"] == round(2 / 3, 4) and by_cap["general"]["achieved"] == round(8 / 12, 4)
    assert by_cap["tools"]["asked"] == 0 and by_cap["tools"]["rows"] == 0
    section = mix_section(report, [], run.store.funnel(), "mix.png")
    assert "| general | 66.67% | 66.67% | 8 | 10 |" in section and "over_mix_share: 2" in section
    run.close()
    # a resumed run decides the same rows
    run = Run(tmp_path, config={"recipe": "mix", "proportions": {"general": 2, "code": 1}})
    again = run.map(MixSelect({"general": 2, "code": 1}), run.source("source", rows), batch_size=3)
    assert {r.id for r in run.store.iter_records(again.stages, kept=True)} == kept
    assert json.loads(json.dumps(mix_report(run.store))) == report
    run.close()


SENTENCES = [
    "Cats sleep for most of the day",
    "Rain makes the streets shine at night",
    "Tea tastes better in cups",
    "Maps fold in surprising ways",
    "Bread rises when the dough is warm",
    "Stars are far suns",
    "Rivers carve valleys over time",
    "Clocks tick in quiet rooms",
    "Music helps some people study",
    "Trees lose their leaves in autumn",
    "Bikes need air in their tyres",
    "Owls hunt after dark",
]


def test_a_reward_model_scores_the_rows_and_its_top_quartile_is_per_capability(tmp_path, scripted_engine):
    """``reward_model``: a real reward model (a keyword model: reward grows with the share of "good"
    tokens) scores every row; the quality step keeps each capability's top quartile, so the general
    rows, which all score below the code rows, still keep theirs."""
    from test_reward_scorer import save_keyword_reward_model

    from synth.export import export_dataset
    from synth.recipe import run_recipe
    from synth.recipes.mix import MixConfig

    def rows(cap, goods):
        return [
            SFTRecord(
                id=f"{cap}{i}",
                messages=[
                    {"role": "user", "content": f"Tell me about item {i} in {cap}."},
                    {"role": "assistant", "content": f"{SENTENCES[i]}. " + " ".join(["good"] * k)},
                ],
                provenance=Provenance(capability=cap),
            )  # fmt: skip
            for i, k in enumerate(goods)
        ]

    summary = {"name": "src", "funnel": [], "models": [], "engines": [], "templates": {}, "sampling": {}}
    export_dataset(rows("general", range(0, 8)) + rows("code", range(8, 16)), [], tmp_path / "src", summary,
                   test_fraction=0.0)  # fmt: skip
    rm = save_keyword_reward_model(tmp_path / "rm")
    cfg = MixConfig(out=str(tmp_path / "mix"), sources=[str(tmp_path / "src")], reward_model=str(rm),
                    rubric=False, difficulty=False, proportions={"general": 1, "code": 1})  # fmt: skip
    run = run_recipe("mix", cfg, engine=scripted_engine)
    scored = {r.id: r.scores["rm"] for r in run.store.iter_records("reward", kept=True)}
    assert len(scored) == 16 and min(scored.values()) >= 0.0
    general = [v for k, v in scored.items() if "general" in k]
    code = [v for k, v in scored.items() if "code" in k]
    assert max(general) < min(code)  # one cutoff over both capabilities would keep no general row
    kept = {r.id: r for r in run.store.iter_records("quality", kept=True)}
    for cap in ("general", "code"):
        values = sorted(v for k, v in scored.items() if cap in k)
        cutoff = values[5] + 0.25 * (values[6] - values[5])  # the 0.75 quantile (linear) of 8 values
        expected = {k for k, v in scored.items() if cap in k and v >= cutoff - 1e-9}
        assert {k for k in kept if cap in k} == expected and len(expected) >= 2
    assert all(r.meta["quality_by"] == "rm_top_quartile" for r in kept.values())
    assert scripted_engine.calls == []  # no rubric, no difficulty: the LLM is never asked
    run.close()
