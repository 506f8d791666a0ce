"""Factuality (Llama 3 section 4.3.6, "knowledge probing"), as a recipe:

    corpus -> snippets -> write_questions (checked: the snippet answers each) -> K answers (policy)
      -> correctness judge (against the snippet) -> informativeness judge
      -> known questions: best correct answer -> SFT rows
      -> consistently wrong questions: most informative wrong answer -> write_refusals -> SFT rows
                                                                     -> refusal over wrong answer -> pairs

Llama 3 aligns its model to "know what it knows" with data from a knowledge probe: (1) extract a data
snippet from the pre-training data; (2) generate a factual question about it; (3) sample responses
to the question from the model; (4) score their correctness with the snippet as the reference and
the model as judge; (5) score their informativeness the same way; (6) generate a refusal for
responses that are consistently informative and incorrect across the generations. This recipe does
exactly that, and also keeps a correct answer for questions the model gets right (at least
``known_share`` of its K answers correct), so that the data does not teach it to refuse what it
knows. The paper gives no K or thresholds for this step; the defaults here are K = 4, correct at a
judge score of 7 of 10, informative at 5, consistently wrong = all K answers informative and wrong.

Snippets come from ``--corpus DIR`` (every .txt/.md file, split into paragraphs), by default the
shipped corpus of checkable country facts (``pipelines/data/factuality/corpus``, generated from the
countryinfo package, MIT; its licence is in the data card). A question is kept only when the short
answer its writer gives occurs in the snippet and not in the question. ``correct_by: match`` (or
``both``) judges correctness by whether an answer states that short answer, for judges too small to
be trusted. Beyond the paper: each refusal also makes a preference row (the refusal over the confident
wrong answer), and the run reports its refusal share (``outcomes``); ``synth eval factuality`` measures
refusal, over-refusal and wrong-answer rates of a model on held-out probes, before and after training.
Not done: the paper's small labelled set on sensitive topics where the pre-training data is wrong.
On the embedded 135M model, questions, answers and judgements are all weak: the mechanics are the same
with a strong teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synth.config import option
from synth.pipeline import Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.stages.factuality.corpus import read_corpus
from synth.stages.factuality.probe import CORRECT_BY, ProbeSelect, Thresholds
from synth.stages.factuality.questions import AnswerQuestions, WriteQuestions, judged_answer
from synth.stages.factuality.refusals import RefusalPairs, WriteRefusal
from synth.stages.judge import JudgeStage
from synth.store import Store

DATA = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "factuality"
SHIPPED_CORPUS = str(DATA / "corpus")
SHIPPED_PROBES = str(DATA / "probes.jsonl")
SHIPPED_CORPUS_LICENSE = (
    "MIT: generated from the countryinfo 1.0.1 package (c) 2018 Porimol Chandro, whose facts are sourced "
    "from Wikipedia (pipelines/data/factuality/make_corpus.py)"
)


@dataclass(kw_only=True)
class FactualityConfig(RecipeConfig):
    corpus: str = option(SHIPPED_CORPUS, "Folder of .txt/.md files whose paragraphs are the snippets.")
    snippets_limit: int = option(0, "Use only the first N snippets (0: all).", min=0)
    snippet_chars: int = option(800, "Longest snippet; longer paragraphs are cut at sentence ends.", min=80)
    questions_per_snippet: int = option(1, "Questions written about each snippet.", min=1)
    k: int = option(4, "Answers sampled from the policy per question.", min=1)
    max_tokens: int = option(96, "Max new tokens of a question, an answer or a refusal.", min=1)
    judge_max_tokens: int = option(48, "Max tokens of a judge's reply.", min=1)
    correct_threshold: float = option(
        7.0, "An answer the correctness judge rates at least this (1-10) is correct.", min=1, max=10
    )
    informative_threshold: float = option(
        5.0, "An answer the informativeness judge rates at least this (1-10), and that does not refuse, is "
        "informative.", min=1, max=10,
    )  # fmt: skip
    correct_by: str = option(
        "judge", "judge: the correctness judge decides (Llama 3); match: the answer states the snippet's "
        "short answer; both: both.", choices=CORRECT_BY,
    )  # fmt: skip
    known_share: float = option(
        0.5, "A question is known when this share of its answers are correct.", gt=0.0, max=1.0
    )
    wrong_share: float = option(
        1.0, "A question is consistently wrong when this share of its answers are informative and wrong.",
        gt=0.0, max=1.0,
    )  # fmt: skip

    def thresholds(self) -> Thresholds:
        return Thresholds(self.correct_threshold, self.informative_threshold, self.known_share,
                          self.wrong_share, self.correct_by)  # fmt: skip


@recipe("factuality", FactualityConfig)
def factuality(run: Run, cfg: FactualityConfig) -> Outputs:
    """Snippets -> questions -> K answers -> correctness + informativeness -> known answers, refusals."""
    llm = dict(engine=run.engine, round=cfg.round)
    bs = cfg.batch_size
    shipped = Path(cfg.corpus).resolve() == Path(SHIPPED_CORPUS).resolve()
    source = {"name": "corpus", "path": Path(cfg.corpus).name,
              "license": SHIPPED_CORPUS_LICENSE if shipped else "the user's (not recorded)"}  # fmt: skip
    run.store.set_meta("data_sources", [source])

    # 1. snippets, 2. questions the snippet answers
    snippets = run.source(
        "snippets", read_corpus(cfg.corpus, cfg.snippet_chars, limit=cfg.snippets_limit or None)
    )
    write = WriteQuestions(sampling=cfg.sampling(n=cfg.questions_per_snippet), **llm)
    questions = run.map(write, snippets, bs)

    # 3. K answers from the policy, closed book; 4. correctness against the snippet; 5. informativeness
    answers = run.map(AnswerQuestions(sampling=cfg.sampling(), **llm), questions, bs)
    judge = dict(max_tokens=cfg.judge_max_tokens)
    correctness = JudgeStage("correctness", run.engine, load_prompt("factuality/correctness"), judged_answer,
                             score="correctness", **judge)  # fmt: skip
    informative = JudgeStage("informativeness", run.engine, load_prompt("factuality/informativeness"),
                             judged_answer, score="informativeness", **judge)  # fmt: skip
    judged = run.map(correctness, answers, bs * cfg.k)
    judged = run.map(informative, judged, bs * cfg.k)

    # 6. known questions keep a correct answer; consistently wrong ones get a refusal (+ a pair)
    known = run.grouped(ProbeSelect("known", cfg.thresholds()), judged)
    wrong = run.grouped(ProbeSelect("consistently_wrong", cfg.thresholds()), judged)
    refusals = run.map(WriteRefusal(sampling=cfg.sampling(n=1, temperature=0.0), **llm), wrong, bs)
    pairs = run.map(RefusalPairs(), refusals, 1000)

    run.store.set_meta("outcomes", outcomes(run.store))
    return Outputs(prompts=questions, sft=[known, refusals], preference=[pairs])


def outcomes(store: Store) -> dict[str, int | float]:
    """The probe in a line: questions by verdict, the rows made, and the refusal share of SFT rows."""

    def kept(stage: str) -> int:
        return store.count(stage, kept=True)

    verdicts = dict(
        store.query(
            "SELECT json_extract_string(data, '$.meta.probe.verdict') AS v, count(DISTINCT grp) "
            "FROM records WHERE stage = 'known_answers' GROUP BY v"
        )
    )
    known, refusals = kept("known_answers"), kept("write_refusals")
    return {
        "snippets": kept("snippets"),
        "questions": kept("write_questions"),
        "known questions": int(verdicts.get("known", 0)),
        "consistently wrong": int(verdicts.get("consistently_wrong", 0)),
        "inconsistent": int(verdicts.get("inconsistent", 0)),
        "known-answer sft": known,
        "refusal sft": refusals,
        "refusal pairs": kept("refusal_pairs"),
        "refusal share": round(refusals / (known + refusals), 4) if known + refusals else 0.0,
    }
