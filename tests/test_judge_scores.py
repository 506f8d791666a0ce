"""Judge scores as disjoint whole labels (1..10), the same kind of score on every engine, the method
recorded per row, and the whole conversation in the judge's prompt."""

from __future__ import annotations

import math

import pytest

from synth.engines.base import Request, SamplingParams
from synth.engines.choices import choice_nodes, path_choice_logprobs, whole_choice_logprobs
from synth.engines.openai import OpenAIEngine
from synth.pipeline import CachedEngine
from synth.prompts import load_prompt
from synth.records import Message, SFTRecord
from synth.stages.judge import SCORE_CHOICES, JudgeStage, expected_score, judge, question_answer
from synth.store import Store

try:  # works whether or not tests/ is a package
    from tests.openai_server import OpenAIServer
except ImportError:  # pragma: no cover
    from openai_server import OpenAIServer

CHOICES = list(SCORE_CHOICES)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


# -- a toy judge on SmolLM2's tokenization: " 10" is " " + "1" + "0" ------------------------------
def toy_next(certain_of: int):
    """Next-token probabilities (over characters) of a judge that writes " <certain_of>" after
    "Score:" with probability 0.95, else " 5"."""
    target = f" {certain_of}"

    def dist(written: str) -> dict[str, float]:
        if written == "":
            return {" ": 1.0}
        if written == " ":
            first = target[1]
            return {first: 0.95, "5": 0.05} if first != "5" else {"5": 1.0}
        if target.startswith(written) and written != target:
            return {target[len(written)]: 0.98, "\n": 0.02}
        return {"\n": 0.99, "0": 0.01}  # a number spelled: it ends (or, rarely, goes on)

    return dist


def toy_whole(certain_of: int) -> dict[str, float]:
    dist = toy_next(certain_of)
    tok = [[ord(ch) for ch in c] for c in CHOICES]  # one token per character
    text = {node: "".join(map(chr, node)) for node in choice_nodes(tok)}
    return whole_choice_logprobs(
        CHOICES,
        tok,
        lambda node, t: math.log(dist(text[node]).get(chr(t), 0.0) or 1e-300),
        lambda node: sum(p for ch, p in dist(text[node]).items() if ch.isalnum()),
    )


def toy_prefix_sums(certain_of: int) -> dict[str, float]:
    """The old reading: log P(the label's tokens), nothing about what follows."""
    dist = toy_next(certain_of)
    out = {}
    for c in CHOICES:
        out[c] = sum(math.log(dist(c[:j]).get(c[j], 0.0) or 1e-300) for j in range(len(c)))
    return out


def test_whole_labels_score_ten_above_nine_where_token_prefixes_inverted_them():
    # the old reading: P(" 1") holds all of P(" 10"), so a judge certain of 10 scores ~5.5, below 9
    assert expected_score(toy_prefix_sums(10)) == pytest.approx(5.5, abs=0.3)
    assert expected_score(toy_prefix_sums(10)) < expected_score(toy_prefix_sums(9))
    ten, nine = expected_score(toy_whole(10)), expected_score(toy_whole(9))
    assert ten > 9.5 and 8.5 < nine < 9.1 and ten > nine
    assert sum(math.exp(v) for v in toy_whole(10).values()) <= 1.0 + 1e-9  # disjoint outcomes
    assert math.exp(toy_whole(10)[" 10"]) == pytest.approx(0.95 * 0.98 * 0.99)
    assert math.exp(toy_whole(10)[" 1"]) == pytest.approx(0.95 * 0.02)


def toy_path(certain_of: int, top: int = 20) -> list[tuple[str, float, dict[str, float]]]:
    """The greedy reply "Score: <n>\\n..." of the toy judge, with top alternatives per token."""
    dist = toy_next(certain_of)
    tokens = [("Score", 0.0, {"Score": 0.0}), (":", 0.0, {":": 0.0})]
    written = ""
    while True:
        d = dist(written)
        best = max(d, key=d.get)
        alts = dict(sorted(((a, math.log(p)) for a, p in d.items()), key=lambda kv: -kv[1])[:top])
        tokens.append((best, math.log(d[best]), alts))
        if best == "\n":
            break
        written += best
    tokens.append(("Rationale: fine.", 0.0, {}))
    return tokens


def test_path_reading_matches_the_exact_one_along_the_reply():
    for n in (10, 9, 1):
        got = path_choice_logprobs(toy_path(n), len("Score:"), CHOICES)
        exact = toy_whole(n)
        assert expected_score(got) == pytest.approx(expected_score(exact), abs=0.01)
        target = f" {n}"  # on the path: exact
        assert got[target] == pytest.approx(exact[target])
    assert path_choice_logprobs(toy_path(10), 999, CHOICES) is None  # the reply never got there


def test_path_reading_handles_a_label_in_one_token_and_a_token_across_the_prefix():
    # tokenizers that write " 7" (or " 7\n") in one token, and "Score: 7" with ":" + " 7" merged
    tokens = [("Score", 0.0, {}), (": 7", math.log(0.6), {": 7": math.log(0.6), ": 3\n": math.log(0.4)})]
    got = path_choice_logprobs(tokens, len("Score:"), CHOICES)
    assert math.exp(got[" 7"]) == pytest.approx(0.6) and math.exp(got[" 3"]) == pytest.approx(0.4)
    assert expected_score(got) == pytest.approx(0.6 * 7 + 0.4 * 3)


# -- the judge stage: method recorded, whole conversation shown -----------------------------------
def convo(rid: str = "c0") -> SFTRecord:
    msgs = [
        Message(role="system", content="You are a pirate."),
        Message(role="user", content="My name is Ada."),
        Message(role="assistant", content="Ahoy, Ada!"),
        Message(role="user", content="What is my name?"),
        Message(role="assistant", content="Your name be Ada."),
    ]
    return SFTRecord(id=rid, messages=msgs)


def test_the_judge_sees_the_whole_conversation(scripted_engine):
    seen = []

    def reply(msgs, j, sampling):
        seen.append(msgs[-1]["content"])
        return "Score: 8\nRationale: remembers the name."

    scripted_engine.reply = reply
    judge_stage = JudgeStage("judge", scripted_engine, load_prompt("general/judge"), question_answer)
    (rec,) = judge_stage([convo()])
    (prompt,) = seen
    for earlier in ("You are a pirate.", "My name is Ada.", "Ahoy, Ada!"):
        assert earlier in prompt
    assert prompt.index("My name is Ada.") < prompt.index("Ahoy, Ada!") < prompt.index("What is my name?")
    assert "Your name be Ada." in prompt
    assert rec.scores["judge"] == 8.0 and rec.meta["judge_score_method"] == "text"
    # a single-turn prompt renders as it always did (no empty "conversation" block)
    single = SFTRecord(
        id="s", messages=[Message(role="user", content="Q?"), Message(role="assistant", content="A.")]
    )
    assert load_prompt("general/judge").messages(**question_answer(single))[-1]["content"] == (
        "Question: Q?\n\nAnswer: A.\n\nRate the answer."
    )


def test_the_judge_records_which_method_scored_each_row(scripted_engine, tmp_path):
    scripted_engine.reply = lambda msgs, j, s: "Score: 3\nRationale: meh"
    scripted_engine.choice_logprobs = lambda reqs, prefix, choices: [
        {c: (0.0 if c == " 10" else -math.inf) for c in choices}
        if "first" in r.messages[-1]["content"]
        else None
        for r in reqs
    ]
    rows = [
        SFTRecord(id=i, messages=[Message(role="user", content=q), Message(role="assistant", content="x")])
        for i, q in (("a", "first"), ("b", "second"))
    ]
    cached = CachedEngine(scripted_engine, Store(tmp_path))
    a, b = JudgeStage("judge", cached, load_prompt("general/judge"), question_answer)(rows)
    assert (a.scores["judge"], a.meta["judge_score_method"]) == (10.0, "logprobs")
    assert (b.scores["judge"], b.meta["judge_score_method"]) == (3.0, "text")  # no distribution: written


# -- the openai engine over HTTP: the same kind of score ------------------------------------------
def test_openai_choice_logprobs_over_http_equal_the_distribution_computed_locally(tmp_path):
    with OpenAIServer(token_logprobs=lambda prompt: toy_path(10 if "great" in prompt else 9)) as srv:
        eng = OpenAIEngine("fake", srv.base_url, api_key="", backoff_base_s=0.01)
        reqs = [Request.chat("a great answer"), Request.chat("a good answer")]
        ten, nine = eng.choice_logprobs(reqs, "Score:", CHOICES)
        hit = srv.hits_for("a great answer")[0]
        assert hit.n == 1 and hit.max_tokens == eng.choice_max_tokens
        # through a judge stage, behind the run's cache
        cached = CachedEngine(eng, Store(tmp_path))
        js = judge(cached, reqs, max_tokens=16)
    for got, n in ((ten, 10), (nine, 9)):
        assert expected_score(got) == pytest.approx(expected_score(toy_whole(n)), abs=0.01)
    assert expected_score(ten) > 9.5 > expected_score(nine) > 8.5
    assert [j.method for j in js] == ["logprobs", "logprobs"]
    assert js[0].score == pytest.approx(expected_score(toy_whole(10)), abs=0.01)


def test_openai_without_logprobs_falls_back_to_the_written_score_and_stops_asking():
    with OpenAIServer() as srv:  # echoes; sends no logprobs, as a server that has none
        eng = OpenAIEngine("fake", srv.base_url, api_key="", backoff_base_s=0.01, max_concurrency=1)
        reqs = [Request.chat(f"Score: {i}") for i in (4, 6, 8)]
        js = judge(eng, reqs, max_tokens=16)
        logprob_requests = [h for h in srv.hits if h.max_tokens == eng.choice_max_tokens]
    assert [j.score for j in js] == [4.0, 6.0, 8.0]
    assert [j.method for j in js] == ["text"] * 3
    assert len(logprob_requests) == 1  # learnt once, not asked for every row


@pytest.mark.slow
def test_real_judge_certain_of_ten_scores_above_one_certain_of_nine(hf_engine):
    """SmolLM2 writes " 10" as " ", "1", "0": read token by token, P(" 1") would hold P(" 10")."""
    assert len(hf_engine.tokenizer(" 10", add_special_tokens=False)["input_ids"]) > len(
        hf_engine.tokenizer(" 9", add_special_tokens=False)["input_ids"]
    )
    req = Request.chat("What is the capital of France?")
    prefixes = {n: f"Score: {n}. I repeat: {n} out of 10.\nScore:" for n in (10, 9)}
    ten, nine = (hf_engine.choice_logprobs([req], prefixes[n], CHOICES)[0] for n in (10, 9))
    assert max(ten, key=ten.get) == " 10" and max(nine, key=nine.get) == " 9"
    assert expected_score(ten) > expected_score(nine) + 0.3
    assert sum(math.exp(v) for v in ten.values()) <= 1.0 + 1e-6  # disjoint outcomes


@pytest.mark.slow
def test_real_model_over_http_gives_the_score_the_local_engine_gives(hf_engine):
    """The same model: exact teacher-forced locally, top-20 log-probs of its reply over HTTP."""
    msgs = load_prompt("general/judge").messages(question="What is 2 + 2?", answer="2 + 2 is 4.")
    req = Request.chat(msgs)
    reply = hf_engine.generate([req], SamplingParams(n=1, temperature=0.0, max_tokens=8))[0][0].text
    assert reply.startswith("Score:")  # the few-shot format: the distribution is read right there
    local = hf_engine.choice_logprobs([req], "Score:", CHOICES)[0]
    with OpenAIServer(model="smollm2", engine=hf_engine) as srv:
        eng = OpenAIEngine("smollm2", srv.base_url, api_key="", choice_max_tokens=8)
        (dist,) = eng.choice_logprobs([req], "Score:", CHOICES)
    assert dist is not None
    # bf16 logits in batches of different shapes differ by a few percent: close, not bit-equal
    assert expected_score(dist) == pytest.approx(expected_score(local), abs=0.25)
    p, q = (_normalised(d) for d in (local, dist))
    assert sum(abs(p[c] - q[c]) for c in CHOICES) / 2 < 0.1  # total variation


def _normalised(logprobs: dict[str, float]) -> dict[str, float]:
    total = sum(math.exp(v) for v in logprobs.values())
    return {c: math.exp(v) / total for c, v in logprobs.items()}
