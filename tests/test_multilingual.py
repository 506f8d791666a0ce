"""`synth run multilingual`: language identification (two detectors, abstention, switches), the
translation checks, the drawn temperatures, round-trip chrF, the recipe end to end (scripted and on
the embedded model), the per-language funnel, the card's language mix, and an independent language
check of the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from killing import committed, events, run_and_kill

from pipelines.cli import main
from synth.io import InputFileError
from synth.recipe import run_recipe
from synth.recipes.multilingual import MultilingualConfig, exported_problems
from synth.records import Message, Provenance, SFTRecord
from synth.stages.language import LanguageID, LanguageStage, check_export, check_languages, language_funnel
from synth.stages.language import main as language_cli
from synth.stages.multilingual.native import drawn_temperature
from synth.stages.multilingual.parallel import RoundTrip
from synth.stages.multilingual.translate import clean_translation, numbers

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "pipelines/data/multilingual/seeds.jsonl"
PARALLEL = ROOT / "pipelines/data/multilingual/parallel.jsonl"

GERMAN = (
    "Der Himmel ist blau, weil das Sonnenlicht in der Luft gestreut wird und blaues Licht stärker streut."
)
ENGLISH = "The sky is blue because sunlight is scattered in the air and blue light scatters the most."
FRENCH = "Le ciel est bleu parce que la lumière du soleil est diffusée dans l'air, surtout la lumière bleue."


@pytest.fixture(scope="module")
def lingua() -> LanguageID:
    return LanguageID()


@pytest.fixture(scope="module")
def fasttext() -> LanguageID:
    return LanguageID(backend="fasttext")


def row(rid: str, prompt: str, response: str | None = None, **meta) -> SFTRecord:
    msgs = [Message(role="user", content=prompt)]
    if response:
        msgs.append(Message(role="assistant", content=response))
    return SFTRecord(id=rid, messages=msgs, provenance=Provenance(capability="multilingual"), meta=meta)


def test_both_detectors_read_every_shipped_text_in_its_language(lingua, fasttext):
    """The shipped seeds and parallel sentences: both detectors name the declared language."""
    texts = [
        (d["id"], d["meta"]["language"], d["prompt"]) for d in map(json.loads, SEEDS.read_text().splitlines())
    ]
    for d in map(json.loads, PARALLEL.read_text().splitlines()):
        texts += [
            (d["id"] + "-s", d["source_language"], d["source"]),
            (d["id"] + "-t", d["target_language"], d["target"]),
        ]
    assert {lang for _, lang, _ in texts} == {"en", "de", "fr", "it", "pt", "hi", "es", "th"}
    for lid in (lingua, fasttext):
        result = check_languages(texts, lid)
        assert result.disagreed == [] and result.abstained == [], lid.backend
        assert result.agreed == len(texts) == 63


def test_short_or_unsure_texts_abstain_and_a_switch_midway_is_found(lingua, fasttext):
    for lid in (lingua, fasttext):
        short = lid.detect("Ja, genau.")  # 8 letters: below min_chars
        assert (short.language, short.reason) == (None, "too_short_to_identify")
        assert (
            lid.detect("x = 3 + 4 = 7, \\boxed{7} $$\\frac{1}{2}$$ 12345").reason == "too_short_to_identify"
        )
        assert lid.detect(GERMAN).language == "de"
        switched = lid.switches(f"{GERMAN} {ENGLISH}", "de")
        assert [lang for lang, _ in switched] == ["en"]
        assert lid.switches(f"{GERMAN} Die Antwort ist \\boxed{{7}}.", "de") == []
    unsure = LanguageID(min_confidence=0.99).detect("Explique em duas frases por que o céu é azul.")
    assert unsure.language is None and unsure.reason == "low_language_confidence" and unsure.top == "pt"


def test_both_detectors_together_must_agree(lingua, fasttext):
    """A Hindi-looking reply of the embedded model (Devanagari gibberish): lingua says Hindi, fastText
    Marathi; `both` rejects it, and names the language when the two agree."""
    gibberish = "आसमांने क्या निकिदर्भ कर्यानी मिन्मों कैर्यृत पूलवल्या, एक व"
    assert (lingua.detect(gibberish).language, fasttext.detect(gibberish).language) == ("hi", "mr")
    both = LanguageID(backend="both")
    d = both.detect(gibberish)
    assert (d.language, d.reason, d.top) == (None, "detectors_disagree", "hi")
    german = both.detect(GERMAN)
    assert german.language == "de" and german.confidence == min(
        lingua.detect(GERMAN).confidence, fasttext.detect(GERMAN).confidence
    )
    assert both.detect("Ja, genau.").reason == "too_short_to_identify"
    stage = LanguageStage("response_language", both, lambda r: r.response or "", lambda r: "hi")
    rows = stage([row("g", "दो वाक्यों में समझाइए कि आसमान नीला क्यों होता है।", gibberish)])
    assert not rows[0].kept and rows[0].verdicts[-1].reason == "detectors_disagree"


def test_the_language_stage_records_the_language_or_says_why_not(lingua):
    stage = LanguageStage("response_language", lingua, lambda r: r.response or "", lambda r: r.meta["want"])
    rows = [
        row("ok", "Warum ist der Himmel blau?", GERMAN, want="de"),
        row("wrong", "Warum ist der Himmel blau?", ENGLISH, want="de"),
        row("switch", "Warum ist der Himmel blau?", f"{GERMAN} {ENGLISH}", want="de"),
        row("short", "Warum ist der Himmel blau?", "Licht.", want="de"),
    ]
    stage(rows)
    reasons = {r.id: r.verdicts[-1].reason for r in rows}
    assert reasons == {"ok": "de", "wrong": "wrong_language", "switch": "language_switch",
                       "short": "too_short_to_identify"}  # fmt: skip
    assert [r.id for r in rows if r.kept] == ["ok"]
    assert rows[0].provenance.language == "de" == rows[0].meta["language"]
    assert (
        rows[1].provenance.language is None and rows[1].meta["lid"]["response_language"]["language"] == "en"
    )
    assert rows[2].meta["lid"]["response_language"]["switches"][0]["language"] == "en"
    assert 0.3 <= rows[0].scores["language_confidence"] <= 1.0

    prompts = LanguageStage("prompt_language", lingua, lambda r: r.prompt[-1].content, allowed=("de", "fr"))
    seeds = [row("a", GERMAN), row("b", ENGLISH), row("c", FRENCH, language="de")]
    prompts(seeds)
    assert [r.verdicts[-1].reason for r in seeds] == [
        "de",
        "untargeted_language",
        "declared_language_mismatch",
    ]


def test_translations_keep_their_numbers_in_any_script():
    assert numbers("Tom hat 5 Äpfel und bekommt 3 dazu.") == numbers("Tom has 5 apples and gets 3 more.")
    assert numbers("टॉम के पास ५ सेब हैं और उसे ३ और मिलते हैं।") == numbers("Tom has 5 apples and 3 more.")
    assert numbers("ทอมมีแอปเปิ้ล ๕ ลูก") == numbers("5 apples")
    assert numbers("Er hat 6 Äpfel.") != numbers("He has 5 apples.")
    assert clean_translation('Translation: "Der Zug fährt ab."\n\nThis means the train leaves.') == (
        "Der Zug fährt ab."
    )
    assert clean_translation("**Übersetzung:** Hallo Welt") == "Hallo Welt"


def test_temperatures_are_drawn_per_prompt_in_range_and_the_same_on_a_rerun():
    temps = [drawn_temperature(0, f"p{i}", 0.2, 1.0) for i in range(200)]
    assert all(0.2 <= t <= 1.0 for t in temps) and len(set(temps)) == 9  # 0.2, 0.3, ..., 1.0
    assert temps == [drawn_temperature(0, f"p{i}", 0.2, 1.0) for i in range(200)]
    assert temps != [drawn_temperature(1, f"p{i}", 0.2, 1.0) for i in range(200)]
    assert {drawn_temperature(0, f"p{i}", 0.6, 0.6) for i in range(20)} == {0.6}


def test_the_sampler_keeps_no_state_when_batches_run_at_once(scripted_engine):
    """Run.overlap runs batches of a concurrent stage in threads: each row's provenance must name the
    temperature it was sampled at."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from synth.engines.base import SamplingParams
    from synth.stages.multilingual.native import SampleAtDrawnTemperature

    scripted_engine.reply = lambda msgs, j, sampling: time.sleep(0.005) or f"at {sampling.temperature}"
    stage = SampleAtDrawnTemperature(engine=scripted_engine, sampling=SamplingParams(n=2, seed=0),
                                     capability="multilingual")  # fmt: skip
    batches = [[row(f"p{i}", f"Prompt number {i}")] for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        rows = [r for out in pool.map(stage, batches) for r in out]
    assert len(rows) == 48 and len({r.meta["temperature"] for r in rows}) > 3
    for r in rows:
        t = drawn_temperature(0, r.meta["prompt_id"], 0.2, 1.0)
        assert r.meta["temperature"] == r.provenance.sampling["temperature"] == t and r.response == f"at {t}"


def test_round_trip_chrf_keeps_faithful_translations_only():
    from synth.stages.multilingual.items import Translation

    def task(tid: str, back: str) -> Translation:
        return Translation(id=tid, pair_id="p", source_language="en", target_language="de",
                           source="The train leaves at eight.", reference="Der Zug fährt um acht ab.",
                           translation="Der Zug fährt um acht ab.", back_translation=back,
                           provenance=Provenance(capability="multilingual"))  # fmt: skip

    rows = RoundTrip(threshold=50)([task("good", "The train leaves at eight."), task("bad", "A dog sleeps.")])
    good, bad = rows
    assert good.kept and good.scores["chrf_round_trip"] == 100.0 and good.scores["chrf_reference"] == 100.0
    assert not bad.kept and bad.verdicts[-1].reason == "round_trip_below_threshold"
    assert (
        good.messages[0].content == "Übersetze den folgenden Text ins Deutsche.\n\nThe train leaves at eight."
    )
    assert good.provenance.language == "de" and good.response == "Der Zug fährt um acht ab."


# -- the recipe, scripted -------------------------------------------------------------------------
REPLIES = {"de": GERMAN, "fr": FRENCH, "en": ENGLISH}
NAMES = {"German": "de", "French": "fr", "English": "en"}


def scripted(msgs, j, sampling):
    """A translator that keeps the numbers, solvers that answer 7 in their language (the second
    sample in English), a judge that prefers the first sample, and native answers in the prompt's
    language (the German prompt's second one in English)."""
    import re

    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    into = re.search(r"into (\w+)\.", system)
    if system.startswith("You are a professional translator") and into:
        lang = NAMES[into.group(1)]
        digits = " ".join(re.findall(r"\d+", last))
        return REPLIES[lang] + (f" ({digits})" if digits else "")
    if system.startswith("You solve math"):
        lang = NAMES[re.search(r"only in (\w+)\.", system).group(1)]
        return f"{REPLIES[lang]}\n\\boxed{{7}}" if j == 0 else f"{REPLIES['en']}\n\\boxed{{7}}"
    if "Score: N" in system:
        return f"Score: {6 if 'Variante 1' in last else 9}\nRationale: fine."
    if "Himmel" in last or "Warum" in last:  # German: the second sample answers in English
        return REPLIES["de"] + f" Variante {j}." if j % 2 == 0 else REPLIES["en"]
    return REPLIES["fr"] + f" Variante {j}."  # French: both in French, the second judged worse


@pytest.fixture
def small_inputs(tmp_path) -> dict[str, str]:
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        '{"id": "add", "problem": "What is 3 + 4?", "answer": "7"}\n'
        '{"id": "mul", "problem": "What is 2 * 5?", "answer": "10"}\n'
    )
    seeds = tmp_path / "seeds.jsonl"
    prompts = {
        "de-0": "Warum ist der Himmel blau? Erkläre es in zwei Sätzen.",
        "fr-0": "Pourquoi le ciel est-il bleu ? Explique-le en deux phrases.",
        "en-0": "Why is the sky blue? Explain it in two sentences, please.",
    }
    seeds.write_text("".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in prompts.items()))
    parallel = tmp_path / "parallel.jsonl"
    parallel.write_text(
        "".join(
            line + "\n" for line in PARALLEL.read_text().splitlines() if '"target_language": "de"' in line
        )
    )
    return {"problems": str(problems), "seeds": str(seeds), "parallel": str(parallel)}


def test_the_recipe_end_to_end_with_a_scripted_model(
    tmp_path, scripted_engine, small_inputs, capsys, fasttext
):
    scripted_engine.reply = scripted
    cfg = MultilingualConfig(out=str(tmp_path / "r"), languages=["de", "fr"], k=2, chrf_threshold=10,
                             **small_inputs)  # fmt: skip
    run = run_recipe("multilingual", cfg, scripted_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    assert list(funnel) == [
        "problems", "translate_problems", "problem_language", "solve_translated", "grade_translated",
        "solution_language", "translated_sft", "seeds", "prompt_language", "sample", "response_language",
        "judge", "best_of_k", "preference_pairs", "parallel", "translate", "translation_language",
        "back_translate", "round_trip",
    ]  # fmt: skip
    # every rejection carries its reason
    assert all(sum(f["reasons"].values()) == f["rejected"] for f in funnel.values())
    assert funnel["translate_problems"]["kept"] == 4  # 2 problems x 2 languages, numbers kept
    assert funnel["grade_translated"]["reasons"] == {"wrong_answer": 4}  # "10" answered 7
    assert funnel["solution_language"]["reasons"] == {"wrong_language": 2}  # sample 1 answers in English
    assert funnel["prompt_language"]["reasons"] == {"untargeted_language": 1}  # the English seed
    assert funnel["response_language"]["reasons"] == {"wrong_language": 1}
    assert funnel["preference_pairs"]["kept"] == 1  # French: Variante 0 over Variante 1
    assert funnel["translate"]["kept"] == 6 and funnel["round_trip"]["kept"] == 6
    samples = list(run.store.iter_records("sample"))
    assert {r.meta["temperature"] for r in samples} <= {round(0.2 + 0.1 * i, 4) for i in range(9)}
    assert all(r.provenance.sampling["temperature"] == r.meta["temperature"] for r in samples)

    by_lang = {(r["stage"], r["language"]): (r["kept"], r["rejected"]) for r in language_funnel(run.store)}
    assert by_lang[("translated_sft", "de")] == (1, 0) and by_lang[("translated_sft", "fr")] == (1, 0)
    assert by_lang[("round_trip", "en")] == (3, 0) and by_lang[("round_trip", "de")] == (3, 0)
    outcomes = run.store.get_meta("outcomes")
    assert (
        outcomes["de"]
        == "translated 1 rows / 2 prompts, native 1 rows / 1 prompts, parallel 3 rows / 3 prompts"
    )
    assert run.store.get_meta("data_sources")[0]["license"] == "the user's (not recorded)"
    run.close()

    assert main(["stats", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "funnel per language (kept / rows)" in out and "solution_language" in out

    # export: every row's language recorded, the card's language mix, an independent check
    assert main(["export", str(tmp_path / "r"), "--to", str(tmp_path / "ds")]) == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    assert (
        "## Languages" in card and "| German | `de` |" in card and "![language mix](language_mix.png)" in card
    )
    assert "language:\n- de\n- en\n- fr\n" in card and "## Source data" in card
    assert (tmp_path / "ds" / "language_mix.png").stat().st_size > 1000
    rows = exported_languages(tmp_path / "ds")
    assert len(rows) == 11 and sum(k.startswith("preference:") for k in rows) == 1
    assert sorted(rows.values()) == ["de"] * 5 + ["en"] * 3 + ["fr"] * 3
    assert_languages_match_prompts(tmp_path / "r", rows)
    # the independent check (fastText, the filter being lingua): every prompt and response of the export
    check = check_export(tmp_path / "ds", fasttext)
    assert check.unrecorded == [] and check.disagreed == [] and check.abstained == []
    assert check.agreed == check.checked == 2 * 10 + 3  # sft: prompt + response; the pair: + both
    capsys.readouterr()
    assert language_cli([str(tmp_path / "ds")]) == 0
    assert json.loads(capsys.readouterr().out)["agreed"] == 23


def exported_languages(ds: Path) -> dict[str, str | None]:
    """``{config}:{id}`` -> the language each exported row records (``provenance.language``)."""
    import pyarrow.parquet as pq

    out = {}
    for config in ("sft", "preference"):
        for path in sorted((ds / config).glob("*.parquet")):
            for r in pq.read_table(path).to_pylist():
                out[f"{config}:{r['id']}"] = json.loads(r["provenance"]).get("language")
    return out


def assert_languages_match_prompts(run_dir: Path, exported: dict[str, str | None]) -> None:
    """Each exported row's recorded language is its prompt's, as the run found it before any response:
    the detected language of a translated problem (``problem_language``) or of a native prompt
    (``prompt_language``), the target language of a translation task (its instruction's)."""
    from synth.store import Store

    store = Store(run_dir, read_only=True)
    try:
        prompts: dict[str, str] = {}
        for stage in ("problem_language", "prompt_language"):
            for r in store.iter_records(stage, kept=True):
                prompts[r.id] = r.meta["lid"][stage]["language"]
        prompts.update({t.id: t.target_language for t in store.iter_records("translate", kept=True)})
        prompt_of = {}
        for stage, config in [("translated_sft", "sft"), ("best_of_k", "sft"), ("round_trip", "sft"),
                              ("preference_pairs", "preference")]:  # fmt: skip
            for r in store.iter_records(stage, kept=True):
                prompt_of[f"{config}:{r.id}"] = r.meta["prompt_id"]
    finally:
        store.close()
    assert set(exported) <= set(prompt_of)
    for key, language in exported.items():
        assert language is not None and language == prompts[prompt_of[key]], key


def test_the_export_check_finds_wrong_and_missing_languages(tmp_path, fasttext, capsys):
    """The independent check fails an export whose rows say the wrong language or none; a translation
    task's prompt is read as its instruction, not its source text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.export.schema import SFT_SCHEMA

    def sft(rid: str, user: str, answer: str, **prov) -> dict:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return {"id": rid, "messages": messages, "capability": "multilingual", "scores": "{}",
                "provenance": json.dumps({"capability": "multilingual", **prov})}  # fmt: skip

    rows = [
        sft("ok", "Warum ist der Himmel blau? Erkläre es kurz.", GERMAN, language="de"),
        sft(
            "task",
            f"Übersetze den folgenden Text ins Deutsche.\n\n{ENGLISH}",
            GERMAN,
            language="de",
            template="multilingual/translate",
        ),  # fmt: skip
        sft("wrong", "Warum ist der Himmel blau? Erkläre es kurz.", ENGLISH, language="de"),
        sft("none", "Why is the sky blue? Explain it briefly.", ENGLISH),
    ]
    (tmp_path / "ds" / "sft").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, SFT_SCHEMA), tmp_path / "ds" / "sft" / "train-00000.parquet")
    check = check_export(tmp_path / "ds", fasttext)
    assert check.unrecorded == ["sft:none"] and check.disagreed == [("wrong:response", "de", "en")]
    assert check.checked == 6 and check.agreed == 5 and check.abstained == []
    assert language_cli([str(tmp_path / "ds")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["disagreed"] == [["wrong:response", "de", "en"]] and report["unrecorded"] == ["sft:none"]
    with pytest.raises(SystemExit):
        language_cli([str(tmp_path / "missing")])


def test_translated_reasoning_from_an_export(tmp_path, scripted_engine):
    """--problems an exported folder: its SFT rows whose answer is \\boxed{} or '####' are the problems,
    that answer their gold, carried through translation; prose rows are skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.export.schema import SFT_SCHEMA

    def sft(rid: str, user: str, answer: str) -> dict:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return {"id": rid, "messages": messages, "capability": "math", "scores": "{}", "provenance": "{}"}

    (tmp_path / "ds" / "sft").mkdir(parents=True)
    train = [sft("boxed", "What is 3 + 4?", "3 + 4 = 7.\nThe answer is \\boxed{7}."),
             sft("prose", "Why is the sky blue?", "Because of 2 kinds of scattering.")]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(train, SFT_SCHEMA), tmp_path / "ds/sft/train-00000.parquet")
    test = [sft("hashes", "What is 14 / 2?", "14 / 2 = 7\n#### 7")]
    pq.write_table(pa.Table.from_pylist(test, SFT_SCHEMA), tmp_path / "ds/sft/test-00000.parquet")

    scripted_engine.reply = scripted
    cfg = MultilingualConfig(out=str(tmp_path / "r"), parts=["translated"], languages=["de"], k=2,
                             problems=str(tmp_path / "ds"))  # fmt: skip
    run = run_recipe("multilingual", cfg, scripted_engine)
    problems = {p.id: (p.problem, p.answer) for p in run.store.iter_records("problems")}
    assert problems == {"boxed": ("What is 3 + 4?", "7"), "hashes": ("What is 14 / 2?", "7")}
    rows = {r.id: r for r in run.store.iter_records("translated_sft", kept=True)}
    assert sorted(rows) == ["boxed-de-s0", "hashes-de-s0"]  # the German sample of each, graded against 7
    assert all(r.meta["gold_answer"] == "7" and r.provenance.language == "de" for r in rows.values())
    run.close()

    (tmp_path / "empty" / "sft").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(train[1:], SFT_SCHEMA), tmp_path / "empty/sft/train-00000.parquet")
    with pytest.raises(InputFileError, match="no exported SFT row states its final answer"):
        list(exported_problems(tmp_path / "empty"))
    with pytest.raises(InputFileError, match="no sft/"):
        list(exported_problems(tmp_path))


def test_bad_options_stop_before_the_run_with_the_reason(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["run", "multilingual", "--out", out, "--parts", "translated,poetry"]) == 2
    assert "parts must be some of translated, native, parallel" in capsys.readouterr().err
    assert main(["run", "multilingual", "--out", out, "--languages", "de,xx"]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
    assert main(["run", "multilingual", "--out", out, "--languages", "de,sv"]) == 2
    assert "no few-shot example for sv in synth/prompts/multilingual/solve.yaml" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "multilingual",
                "--out",
                out,
                "--set",
                "temperature_min=0.9",
                "--set",
                "temperature_max=0.5",
            ]
        )
        == 2
    )
    assert "temperature_min (0.9) must not exceed temperature_max (0.5)" in capsys.readouterr().err
    assert not Path(out).exists()


# -- the recipe on the embedded model -------------------------------------------------------------
def tiny_inputs(tmp_path: Path) -> dict[str, str]:
    """One problem, a German and an English prompt, one English-German pair."""
    (tmp_path / "problems.jsonl").write_text('{"id": "add", "problem": "What is 3 + 4?", "answer": "7"}\n')
    prompts = {"de-0": "Warum ist der Himmel blau? Erkläre es in zwei Sätzen.",
               "en-0": "Why is the sky blue? Explain it in two sentences, please."}  # fmt: skip
    (tmp_path / "seeds.jsonl").write_text(
        "".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in prompts.items())
    )
    sister = next(line for line in PARALLEL.read_text().splitlines() if '"id": "sister-de"' in line)
    (tmp_path / "parallel.jsonl").write_text(sister + "\n")
    return {k: str(tmp_path / f"{k}.jsonl") for k in ("problems", "seeds", "parallel")}


@pytest.mark.slow
def test_the_recipe_on_the_embedded_model(tmp_path, hf_engine, fasttext):
    """Every part on the real 135M model, one sample each (K and the pairs are the scripted test's;
    this one is sized for ~2 minutes on 2 cores). It writes little but English: the German yield is
    whatever it is (often none); English, listed as a target here, gives rows to check."""
    cfg = MultilingualConfig(out=str(tmp_path / "r"), languages=["de", "en"], k=1, max_tokens=24,
                             judge_max_tokens=6, **tiny_inputs(tmp_path))  # fmt: skip
    run = run_recipe("multilingual", cfg, hf_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    for f in funnel.values():
        assert f["done"] and sum(f["reasons"].values()) == f["rejected"], f
    assert funnel["translate_problems"]["kept"] + funnel["translate_problems"]["rejected"] == 1  # into de
    assert funnel["prompt_language"]["kept"] == 2
    assert funnel["translate"]["kept"] + funnel["translate"]["rejected"] == 2  # both directions
    for r in run.store.iter_records("solve_translated"):
        assert r.provenance.model == "SmolLM2-135M-Instruct" and r.provenance.template == "multilingual/solve"
    lid = cfg.lid()
    for stage in ("translated_sft", "best_of_k", "round_trip"):
        for r in run.store.iter_records(stage, kept=True):  # kept rows: in their language, says lingua
            assert r.provenance.language == r.meta["language"] == lid.detect(r.response).language
    print("outcomes:", run.store.get_meta("outcomes"))
    run.close()

    assert main(["export", str(tmp_path / "r"), "--to", str(tmp_path / "ds")]) == 0
    rows = exported_languages(tmp_path / "ds")
    assert rows, "the English rows at least are exported"
    assert_languages_match_prompts(tmp_path / "r", rows)
    check = check_export(tmp_path / "ds", fasttext)
    assert check.unrecorded == [] and check.disagreed == [], check.disagreed
    # abstentions (a reply cut too short for fastText) are allowed, disagreements not
    assert check.agreed >= len(rows) and check.agreed + len(check.abstained) == check.checked


# -- kill -9 and resume ---------------------------------------------------------------------------
def synth_cmd(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "pipelines.cli", *args]


def snapshot(run_dir: Path) -> dict:
    from synth.store import Store

    store = Store(run_dir, read_only=True)
    try:
        rows = store.query("SELECT stage, key, kept, reason, data FROM records ORDER BY stage, seq")
        stages = store.query("SELECT stage, rows_in, done FROM stages ORDER BY position")
        meta = {k: store.get_meta(k) for k in ("outputs", "outcomes", "data_sources")}
        return {"rows": rows, "stages": stages, "meta": meta}
    finally:
        store.close()


def first_difference(got: list[tuple], want: list[tuple]) -> str | None:
    """The first stored row that differs, shown where it differs (None: the same rows)."""
    for g, w in zip(got, want, strict=False):
        if g != w:
            i = next((i for i, (x, y) in enumerate(zip(g[4], w[4], strict=False)) if x != y), 0)
            lo = max(0, i - 150)
            return f"{g[:4]} vs {w[:4]}: ...{g[4][lo : i + 150]}... vs ...{w[4][lo : i + 150]}..."
    return None if len(got) == len(want) else f"{len(got)} rows vs {len(want)}"


def stage_done(stage: str):
    return lambda evs: any(e["event"] == "stage_done" and e["stage"] == stage for e in evs)


@pytest.mark.slow  # a dozen subprocesses
def test_killed_runs_resume_to_the_rows_of_an_uninterrupted_run(tmp_path, small_inputs):
    """kill -9 at five points (each in a process that resumed the last), then the same command: the
    store holds exactly the rows of a run never stopped, and no finished batch ran twice. The model is
    the scripted one behind a real HTTP server (a subprocess needs one)."""
    import subprocess

    from conftest import ScriptedEngine
    from openai_server import OpenAIServer

    with OpenAIServer(engine=ScriptedEngine(scripted), delay_s=0.01) as srv:

        def args(out: Path) -> list[str]:
            return synth_cmd(
                "run", "multilingual", "--out", str(out), "--engine", "openai", "--model", "fake",
                "--base-url", srv.base_url, "--languages", "de,fr", "--k", "2", "--batch-size", "1",
                "--chrf-threshold", "10", "--problems", small_inputs["problems"], "--seeds",
                small_inputs["seeds"], "--parallel", small_inputs["parallel"],
            )  # fmt: skip

        reference = tmp_path / "reference"
        subprocess.run(args(reference), check=True, capture_output=True, timeout=300)
        out = tmp_path / "killed"
        points = [
            lambda evs: any(e["event"] == "run_start" for e in evs),  # at start-up
            committed("translate_problems", 1),  # mid-translation
            committed("solve_translated", 2),  # mid-solving, in a process that resumed
            stage_done("response_language"),  # between stages
            committed("back_translate", 2),  # mid back-translation
        ]
        for point in points:
            assert run_and_kill(args(out), out, point), events(out)[-3:]
        subprocess.run(args(out), check=True, capture_output=True, timeout=300)

    got, want = snapshot(out), snapshot(reference)
    assert first_difference(got["rows"], want["rows"]) is None
    assert got == want
    evs = events(out)
    assert sum(e["event"] == "run_done" for e in evs) == 1
    batches = [(e["stage"], e["batch"]) for e in evs if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)), "a finished batch was committed twice"
