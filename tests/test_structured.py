"""Structured output (a JSON schema or a regex on a request) on every engine: vLLM's constrained
decoding (real, on the embedded model), hf's validate-and-retry (real, on the embedded model) and
openai's ``response_format`` over loopback HTTP (the test server honours and checks it)."""

from __future__ import annotations

import json

import httpx
import pytest

from synth.engines import structured
from synth.engines.base import Completion, Request, SamplingParams
from synth.engines.structured import (
    JUDGE_SCORE,
    PROBLEM,
    generate_checked,
    is_valid,
    parse,
    salvage,
    tool_call_schema,
    validate,
)

ANSWER = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
TOOLS = {
    "calculator": {
        "type": "object",
        "properties": {"expression": {"type": "string", "maxLength": 40}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    "search": {
        "type": "object",
        "properties": {"query": {"type": "string", "maxLength": 40}},
        "required": ["query"],
        "additionalProperties": False,
    },
}
SHORT_JUDGE = {  # JUDGE_SCORE with a reasoning short enough that a reply always ends in time
    **JUDGE_SCORE,
    "properties": {**JUDGE_SCORE["properties"], "reasoning": {"type": "string", "maxLength": 60}},
}


# -- the request field ---------------------------------------------------------------------------------
def test_sampling_params_carry_one_checked_constraint():
    s = SamplingParams(json_schema=ANSWER)
    assert s.to_dict()["json_schema"] == ANSWER and "regex" not in s.to_dict()
    assert hash(s) == hash(SamplingParams(json_schema={"type": "string"}))  # hashable; schema not hashed
    plain = SamplingParams().to_dict()  # unchanged without a constraint: engine-cache keys stay
    assert "json_schema" not in plain and "regex" not in plain
    assert SamplingParams(regex=r"\d+").to_dict()["regex"] == r"\d+"
    with pytest.raises(ValueError, match="one constraint"):
        SamplingParams(json_schema=ANSWER, regex="x")
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        SamplingParams(json_schema={"type": "no-such-type"})
    with pytest.raises(ValueError, match="regex does not compile"):
        SamplingParams(regex="(")
    assert SamplingParams(json_schema=ANSWER).replace(n=3).json_schema == ANSWER


def test_validate_salvage_and_the_ready_made_schemas():
    s = SamplingParams(json_schema=ANSWER)
    assert validate('{"answer": 4}', s) is None
    assert "not JSON" in validate("four", s)
    assert "'answer' is a required property" in validate('{"x": 1}', s)
    assert salvage('Sure! ```json\n{"answer": 4}\n``` Done.', s) == '{"answer": 4}'
    assert salvage('{"x": 1} then {"answer": 5}', s) == '{"answer": 5}'
    assert salvage("no json here", s) is None
    r = SamplingParams(regex=r"[0-9]+")
    assert validate("42", r) is None and validate("42!", r) is not None
    assert salvage("It is 42.", r) == "42"
    assert (
        validate(json.dumps({"reasoning": "fine", "score": 7}), SamplingParams(json_schema=JUDGE_SCORE))
        is None
    )
    assert validate('{"reasoning": "x", "score": 11}', SamplingParams(json_schema=JUDGE_SCORE)) is not None
    assert validate('{"problem": "1+1?", "answer": "2"}', SamplingParams(json_schema=PROBLEM)) is None
    call = SamplingParams(json_schema=tool_call_schema(TOOLS))
    assert validate('{"name": "search", "arguments": {"query": "vllm"}}', call) is None
    assert validate('{"name": "search", "arguments": {"expression": "1+1"}}', call) is not None
    assert validate('{"name": "rm -rf", "arguments": {}}', call) is not None


def test_generate_checked_asks_again_only_for_invalid_samples():
    """The retry loop (hf and openai share its rules): invalid samples only, n = how many are still
    invalid, the seed moved each round, a greedy request's retries sampled, costs added up."""
    calls = []

    def generate(requests, sampling):
        calls.append(([r.id for r in requests], sampling.n, sampling.seed, sampling.temperature))
        out = []
        for r in requests:
            comps = []
            for j in range(sampling.n):
                good = r.id == "a" or (r.id == "b" and len(calls) > 1 and j == 0)
                comps.append(Completion('{"answer": 1}' if good else "nope", 3, 5, "stop"))
            out.append(comps)
        return out

    reqs = [Request.chat("x", id="a"), Request.chat("y", id="b"), Request.chat("z", id="c")]
    s = SamplingParams(n=2, temperature=0.0, seed=10, json_schema=ANSWER)
    res = generate_checked(generate, reqs, s, retries=2)
    assert calls[0] == (["a", "b", "c"], 2, 10, 0.0)
    assert calls[1] == (["b", "c"], 2, 10 + 1_000_003, structured.RETRY_TEMPERATURE)
    assert calls[2] == (["b"], 1, 10 + 2 * 1_000_003, structured.RETRY_TEMPERATURE)  # c: n=2, b: n=1
    assert calls[3] == (["c"], 2, 10 + 2 * 1_000_003, structured.RETRY_TEMPERATURE)
    assert all(is_valid(c) for c in res[0]) and res[0][0].extra == {}
    assert is_valid(res[1][0]) and res[1][0].extra["structured_attempts"] == 2
    assert res[1][0].completion_tokens == 10  # two attempts' tokens
    bad = res[2][1]
    assert not is_valid(bad) and "not JSON" in bad.extra["structured_error"]
    assert bad.extra["structured_attempts"] == 3 and bad.completion_tokens == 15
    with pytest.raises(ValueError, match="not JSON"):
        parse(bad)
    assert parse(res[0][0]) == {"answer": 1}
    calls.clear()
    assert generate_checked(generate, reqs[2:], SamplingParams(n=2), retries=2)[0][0].text == "nope"
    assert len(calls) == 1  # no constraint: nothing checked, nothing asked again


# -- openai: response_format over loopback HTTP ------------------------------------------------------------
def test_openai_sends_response_format_and_gets_schema_valid_json():
    from openai_server import OpenAIServer

    from synth.engines.openai import OpenAIEngine

    with OpenAIServer() as srv:
        eng = OpenAIEngine("fake", srv.base_url, backoff_base_s=0.01)
        schema = tool_call_schema(TOOLS)
        res = eng.generate(
            [Request.chat("call a tool"), Request.chat("score it")],
            SamplingParams(n=3, seed=1, max_tokens=200, json_schema=schema),
        )
        assert all(is_valid(c) and parse(c)["name"] in TOOLS for r in res for c in r)
        assert (
            srv.formats == [{"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}] * 2
        )
        assert srv.total_requests == 2  # valid at once: nothing asked again
        # a malformed response_format is refused by the server (as the OpenAI API does)
        bad = {"model": "fake", "messages": [{"role": "user", "content": "x"}]}
        no_name = {"type": "json_schema", "json_schema": {"schema": {}}}
        bad_schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": 5}}}
        for fmt in ({"type": "xml"}, no_name, bad_schema):
            r = httpx.post(srv.base_url + "/chat/completions", json={**bad, "response_format": fmt})
            assert r.status_code == 400, fmt
        eng.close()


def test_openai_checks_replies_of_a_server_that_ignores_the_format():
    from openai_server import OpenAIServer

    from synth.engines.openai import OpenAIEngine

    with OpenAIServer(ignore_format=True) as srv:
        eng = OpenAIEngine("fake", srv.base_url, structured_retries=2)
        (res,) = eng.generate([Request.chat("p1")], SamplingParams(n=2, seed=3, json_schema=ANSWER))
        assert [h.n for h in srv.hits] == [2, 2, 2]  # asked again twice for both, then kept
        assert all(not is_valid(c) and c.extra["structured_attempts"] == 3 for c in res)
        plain = eng.generate([Request.chat("p2")], SamplingParams(n=2, seed=3))[0]
        assert all(c.extra == {} for c in plain) and srv.count("p2") == 1
        eng.close()


@pytest.mark.slow
def test_openai_over_http_to_the_real_hf_engine(hf_engine):
    """A regex and a schema sent over HTTP reach a real model (the hf engine behind the test server,
    which validates and retries); replies come back valid."""
    from openai_server import OpenAIServer

    from synth.engines.openai import OpenAIEngine

    with OpenAIServer(engine=hf_engine, model="smol") as srv:
        eng = OpenAIEngine("smol", srv.base_url, timeout_s=300)
        rx = eng.generate(
            [Request.chat("What is 2 + 2? Reply with the number only.")],
            SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=0, regex=r"[0-9]+"),
        )[0]
        assert all(is_valid(c) and c.text.isdigit() for c in rx)
        js = eng.generate(
            [Request.chat('Repeat exactly: {"answer": 4}')],
            SamplingParams(n=1, temperature=0.0, max_tokens=24, json_schema=ANSWER),
        )[0][0]
        assert is_valid(js) and isinstance(parse(js)["answer"], int)
        eng.close()


# -- hf: validate and retry on the embedded model --------------------------------------------------------
@pytest.mark.slow
def test_hf_validates_and_retries_on_the_embedded_model(hf_engine):
    ask = [
        Request.chat(
            [
                {"role": "system", "content": "You reply with JSON only."},
                {"role": "user", "content": 'What is 2 + 2? Reply as JSON like {"answer": 7}.'},
            ]
        )
    ]
    res = hf_engine.generate(
        ask, SamplingParams(n=3, temperature=0.7, max_tokens=40, seed=0, json_schema=ANSWER)
    )
    assert all(is_valid(c) and isinstance(parse(c)["answer"], int) for c in res[0])
    # a constraint the model never meets: retried, then kept with the reason
    never = SamplingParams(n=2, temperature=0.0, max_tokens=8, json_schema={"const": "zebra-42"})
    (out,) = hf_engine.generate([Request.chat("Say hi.")], never)
    for c in out:
        assert not is_valid(c) and c.extra["structured_attempts"] == hf_engine.structured_retries + 1
    rx = hf_engine.generate(
        [Request.chat("What is 2 + 2? Reply with the number only.")],
        SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=0, regex=r"[0-9]+"),
    )
    assert all(is_valid(c) and c.text.isdigit() for c in rx[0])


# -- vllm: constrained decoding on the embedded model ------------------------------------------------------
@pytest.mark.slow
def test_vllm_constrains_judges_problems_tool_calls_and_regexes(vllm_engine):
    sampling = dict(n=2, temperature=0.8, max_tokens=160, seed=0)
    judge = vllm_engine.generate(
        [Request.chat("Rate this answer from 1 to 10: 'Paris is the capital of France.' Reply in JSON.")],
        SamplingParams(**sampling, json_schema=SHORT_JUDGE),
    )[0]
    problem = vllm_engine.generate(
        [Request.chat("Write a short arithmetic word problem and its answer, as JSON.")],
        SamplingParams(**sampling, json_schema={**PROBLEM, "properties": {
            "problem": {"type": "string", "minLength": 1, "maxLength": 120},
            "answer": {"type": "string", "minLength": 1, "maxLength": 20}}}),
    )[0]  # fmt: skip
    call = vllm_engine.generate(
        [Request.chat("What is 12 * 7? Call a tool.")],
        SamplingParams(**sampling, json_schema=tool_call_schema(TOOLS)),
    )[0]
    for c in judge + problem + call:
        assert is_valid(c), (c.text, c.extra)
    assert all(1 <= parse(c)["score"] <= 10 for c in judge)
    assert all(parse(c)["answer"] for c in problem)
    assert all(parse(c)["name"] in TOOLS for c in call)
    rx = vllm_engine.generate(
        [Request.chat("Pick a date.")], SamplingParams(**sampling, regex=r"20[0-9]{2}-[01][0-9]-[0-3][0-9]")
    )[0]
    assert all(is_valid(c) and len(c.text) == 10 for c in rx)
    # a reply cut at max_tokens cannot be whole: marked, not passed off as valid
    (cut,) = vllm_engine.generate(
        [Request.chat("Describe Paris.")],
        SamplingParams(temperature=0.0, max_tokens=4, json_schema={"type": "object", "properties": {
            "text": {"type": "string", "minLength": 200}}, "required": ["text"]}),
    )[0]  # fmt: skip
    assert cut.finish_reason == "length" and "cut at max_tokens" in cut.extra["structured_error"]


@pytest.mark.slow
def test_openai_over_http_to_the_real_vllm_engine(vllm_engine):
    """response_format over loopback HTTP, constrained by real vLLM behind the test server."""
    from openai_server import OpenAIServer

    from synth.engines.openai import OpenAIEngine

    with OpenAIServer(engine=vllm_engine, model="smol") as srv:
        eng = OpenAIEngine("smol", srv.base_url, timeout_s=300)
        res = eng.generate(
            [Request.chat("Rate 'The sky is blue.' from 1 to 10 in JSON.")],
            SamplingParams(n=2, temperature=0.8, max_tokens=160, seed=0, json_schema=SHORT_JUDGE),
        )[0]
        assert all(is_valid(c) and c.extra["structured_attempts"] == 1 for c in res)
        assert all(1 <= parse(c)["score"] <= 10 for c in res)
        eng.close()
