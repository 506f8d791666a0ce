"""The tools recipe's parts: function schemas, reading calls, the calculator, search, execution in the
real sandbox (user functions with their state replayed), the tool-call rendering that generation and
training share, the record model's tool fields, and the recipe's control flow, funnel and export with
the scripted engine (the embedded model's run is in test_tools_e2e.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import pytest

from synth.chat import TOOL_CALL, TOOL_RESPONSE, tool_fallback
from synth.records import Message, SFTRecord, record_from_json
from synth.stages.execute import Sandbox
from synth.stages.tools.calculator import Calculator, ExpressionError, evaluate_expression
from synth.stages.tools.calls import Call, CallError, parse_call, parse_turn
from synth.stages.tools.registry import Toolbox, core_specs, function_specs
from synth.stages.tools.schema import SchemaError, check_arguments, function_schema
from synth.stages.tools.search import SearchIndex, read_documents

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "pipelines" / "data" / "tools" / "filesystem.py"
CORPUS = ROOT / "pipelines" / "data" / "tools" / "corpus"
TOOL_TEMPLATE = (  # a ChatML template that renders tools itself (as Qwen's and Hermes' do)
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# -- schemas ---------------------------------------------------------------------------------------
def test_function_schemas_come_from_type_hints_and_docstrings(tmp_path):
    specs, skipped = function_specs(FIXTURE)
    by_name = {s.name: s.function["function"] for s in specs}
    assert list(by_name) == ["list_dir", "make_dir", "write_file", "read_file", "delete_file", "days_between",
                             "convert_temperature"]  # fmt: skip
    assert skipped == {}
    write = by_name["write_file"]
    assert write["description"] == "Write text to a file, replacing what it held (its folder must exist)."
    assert write["parameters"] == {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": 'The file, e.g. "/notes/shopping.txt".'},
            "text": {"type": "string", "description": "What the file should contain."},
        },
        "required": ["path", "text"],
    }
    assert by_name["list_dir"]["parameters"]["required"] == []
    assert by_name["list_dir"]["parameters"]["properties"]["path"]["default"] == "/"
    to = by_name["convert_temperature"]["parameters"]["properties"]["to"]
    assert to["enum"] == ["celsius", "fahrenheit"] and to["type"] == "string"

    src = tmp_path / "mine.py"
    src.write_text(
        "def nodoc(x: int) -> int:\n    return x\n\n"
        "def untyped(x):\n    'Double.'\n    return 2 * x\n\n"
        "def star(*xs: int) -> int:\n    'Sum.'\n    return sum(xs)\n\n"
        "def list_dir() -> str:\n    'Shadows nothing: python is the core one.'\n    return ''\n\n"
        "def python(code: str) -> str:\n    'Clashes with the core tool.'\n    return code\n\n"
        "def _private(x: int) -> int:\n    'Hidden.'\n    return x\n\n"
        "def opt(n: int | None = None, tags: list[str] | None = None) -> int:\n"
        "    '''Count.\n\n    :param n: how many\n    '''\n    return 0\n"
    )
    specs, skipped = function_specs(src)
    assert [s.name for s in specs] == ["list_dir", "opt"]
    assert set(skipped) == {"nodoc", "untyped", "star", "python"}
    assert "no docstring" in skipped["nodoc"] and "no type hint" in skipped["untyped"]
    opt = specs[1].function["function"]["parameters"]["properties"]
    assert opt["n"] == {"type": ["integer", "null"], "description": "how many", "default": None}
    assert opt["tags"]["type"] == ["array", "null"] and opt["tags"]["items"] == {"type": "string"}
    with pytest.raises(SchemaError, match="no docstring"):
        function_schema(lambda x: x)


def test_arguments_are_checked_against_the_schema():
    params = function_schema(_sample)["function"]["parameters"]
    assert check_arguments({"path": "/a", "n": 2, "mode": "fast", "tags": ["x"]}, params) is None
    assert check_arguments({"path": "/a"}, params) is None
    assert check_arguments({}, params) == "missing required argument 'path'"
    assert check_arguments({"path": 3}, params) == "'path' must be string, got integer"
    assert check_arguments({"path": "/a", "n": True}, params) == "'n' must be integer, got boolean"
    assert check_arguments({"path": "/a", "n": 1.5}, params) == "'n' must be integer, got number"
    assert check_arguments({"path": "/a", "mode": 2}, params) == "'mode' must be string, got integer"
    assert check_arguments({"path": "/a", "tags": [1]}, params) == "'tags[0]' must be string, got integer"
    assert check_arguments({"path": "/a", "extra": 1}, params).startswith("unknown argument 'extra'")
    assert check_arguments(["/a"], params) == "arguments must be a JSON object, got array"


def _sample(path: str, n: int = 1, mode: str = "fast", tags: list[str] | None = None) -> str:
    """A sample.

    Args:
        path: Where.
        n: How many.
    """
    return path


def test_sample_enum_via_literal():
    def f(mode: Literal["fast", "slow"]) -> str:
        """Pick.

        Args:
            mode: The speed.
        """
        return mode

    params = function_schema(f)["function"]["parameters"]
    assert params["properties"]["mode"] == {
        "enum": ["fast", "slow"],
        "type": "string",
        "description": "The speed.",
    }
    assert (
        check_arguments({"mode": "medium"}, params) == "'mode' must be one of ['fast', 'slow'], got 'medium'"
    )


# -- reading a turn -------------------------------------------------------------------------------
def test_a_turn_is_a_call_in_tags_bare_json_or_an_answer():
    names = frozenset({"calculator", "search"})
    t = parse_turn(
        'I will compute it.\n<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}', names
    )
    assert (t.thought, t.calls, t.format) == (
        "I will compute it.",
        [Call("calculator", {"expression": "2+3"})],
        "tags",
    )
    t = parse_turn('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>', names)
    assert t.calls == [Call("search", {"query": "x"})]  # OpenAI's arguments-as-text
    t = parse_turn('<tool_call>{"name": "search", "parameters": {"query": "x"}} and more', names)
    assert t.calls == [Call("search", {"query": "x"})]  # trailing text after the JSON value
    t = parse_turn('```json\n{"name": "search", "arguments": {"query": "x"}}\n```', names)
    assert t.calls == [Call("search", {"query": "x"})] and t.format == "bare_json"
    assert parse_turn('{"name": "weather", "arguments": {}}', names).answer  # an unknown name: just text
    assert parse_turn("The answer is 5.", names).answer == "The answer is 5."
    for text, reason in [
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"', "bad_json"),
        ("<tool_call>calculator(2+3)</tool_call>", "bad_json"),
        ('<tool_call>{"arguments": {}}', "bad_format"),
        ('<tool_call>{"name": "search", "arguments": ["x"]}', "bad_format"),
        ("<tool_call></tool_call>", "bad_format"),
        ("   ", "empty_reply"),
    ]:
        with pytest.raises(CallError) as err:
            parse_turn(text, names)
        assert err.value.reason == reason, text
    assert parse_call('{"name": "f", "arguments": {"a": 1}}') == Call("f", {"a": 1})


# -- the calculator, search -------------------------------------------------------------------
def test_the_calculator_is_exact_solves_equations_and_never_evaluates_python():
    assert evaluate_expression("17 * 23 + 5") == "396"
    assert evaluate_expression("2^10 / 3") == "1024/3 = 341.333333333"
    assert evaluate_expression("x**2 - 4 = 0") == "x = -2 or x = 2"
    assert evaluate_expression("sqrt(2) * pi") == "sqrt(2)*pi = 4.44288293816"
    assert evaluate_expression("0.1 + 0.2") == "3/10 = 0.3"
    assert evaluate_expression("round(2/3, 3)") == "0.667"
    for bad, why in [
        ('__import__("os").system("true")', "unknown function"),
        ("().__class__", "not arithmetic"),
        ("x.real", "not arithmetic"),
        ("'text'", "not arithmetic"),
        ("1/0", "undefined"),
        ("a = b = c", "at most one"),
    ]:
        with pytest.raises(ExpressionError, match=why):
            evaluate_expression(bad)


def test_the_calculator_worker_survives_a_runaway_expression():
    calc = Calculator(timeout=1.5)
    try:
        assert calc.evaluate("9**9**9")[1].startswith("TimeoutError")
        assert calc.evaluate("6 * 7") == (True, "42")  # a fresh worker took over
        assert calc.evaluate("open('x')") == (False, "unknown function 'open'; known: " + calc_known())
    finally:
        calc.close()


def calc_known() -> str:
    from synth.stages.tools.calculator import FUNCTIONS

    return ", ".join(FUNCTIONS)


def test_search_finds_the_passage_that_answers():
    passages = list(read_documents(CORPUS))
    assert {p.path for p in passages} >= {"harbor_town_library.md", "solar_system.md"}
    assert all(p.text and p.title for p in passages)
    index = SearchIndex(passages)
    top = index.search("library opening hours Saturday", 3)
    assert top[0][0].title == "Harbor Town Public Library" and "19:00" in top[0][0].text
    assert index.search("How long is a year on Mars?", 1)[0][0].title == "The Solar System"
    assert index.render("zzzz qqqq") == "No results."
    assert index.render("sourdough hydration").startswith("[1] A Simple Sourdough Bread (recipes_bread.md)")


# -- execution --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toolbox():
    from sandboxes import Limits

    specs, _ = function_specs(FIXTURE)
    box = Toolbox(
        core_specs(["python", "calculator", "search"]) + specs,
        Sandbox(limits=Limits(timeout_s=3, memory_mb=256)),
        index=SearchIndex(read_documents(CORPUS)),
        module_text=FIXTURE.read_text(),
    )
    yield box
    box.close()


def test_every_call_is_checked_then_executed_in_the_sandbox(toolbox):
    read = Call("read_file", {"path": "/notes/new.txt"})
    calls = [
        (Call("python", {"code": "print(sum(range(10)))"}), []),
        (Call("python", {"code": "1/0"}), []),
        (Call("python", {"code": "while True: pass"}), []),
        (Call("calculator", {"expression": "2**8"}), []),
        (Call("search", {"query": "Pluto dwarf planet"}), []),
        (Call("weather", {"city": "Oslo"}), []),
        (Call("write_file", {"path": "/notes/a.txt"}), []),
        (read, []),  # a fresh environment: no such file
        (read, [Call("write_file", {"path": "/notes/new.txt", "text": "hello"})]),  # state replayed
        (Call("list_dir", {"path": "/notes"}), [Call("write_file", {"path": "/notes/new.txt", "text": "x"})]),
        (Call("convert_temperature", {"value": 100, "to": "fahrenheit"}), []),
        (Call("days_between", {"start": "2024-02-30", "end": "2024-03-01"}), []),
    ]
    out = toolbox.execute(calls)
    assert [(e.reason, e.output) for e in out[:1]] == [(None, "45")]
    assert out[1].reason == "execution_error" and "ZeroDivisionError" in out[1].output
    assert out[2].reason == "timeout"
    assert out[3].output == "256" and out[4].output.startswith("[1] The Solar System")
    assert (
        out[5].reason == "unknown_tool" and "the tools are: calculator, convert_temperature" in out[5].output
    )
    assert out[6].reason == "schema_violation" and "missing required argument 'text'" in out[6].output
    assert out[7].reason == "execution_error" and "no such file: /notes/new.txt" in out[7].output
    assert out[8].ok and out[8].output == "hello"
    assert json.loads(out[9].output) == ["ideas.txt", "new.txt", "todo.txt"]
    assert out[10].output == "212.0"
    assert out[11].reason == "execution_error" and "ValueError" in out[11].output


# -- rendering: generation and training --------------------------------------------------------
CALL_1 = {"id": "call_1", "type": "function",
          "function": {"name": "calculator", "arguments": '{"expression": "2+3"}'}}  # fmt: skip
CALL_2 = {
    "id": "call_2",
    "type": "function",
    "function": {"name": "calculator", "arguments": {"expression": "4*5"}},
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+3, and 4*5?"},
    {"role": "assistant", "content": "Two sums.", "tool_calls": [CALL_1]},
    {"role": "tool", "content": "5", "tool_call_id": "call_1", "name": "calculator"},
    {"role": "assistant", "content": "", "tool_calls": [CALL_2]},
    {"role": "tool", "content": "20", "tool_call_id": "call_2", "name": "calculator"},
    {"role": "assistant", "content": "5 and 20."},
]
TOOLS = core_specs(["calculator"])[0].function


def test_the_fallback_renders_tools_calls_and_results_as_plain_turns():
    flat = tool_fallback(CONVERSATION, [TOOLS])
    assert [m["role"] for m in flat] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    system = flat[0]["content"]
    assert system.startswith("Be brief.\n\nYou can call functions") and json.dumps(TOOLS) in system
    assert (
        flat[2]["content"]
        == 'Two sums.\n<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'
    )
    assert flat[3]["content"] == '<tool_response>{"name": "calculator", "content": "5"}</tool_response>'
    assert flat[4]["content"].startswith(TOOL_CALL[0]) and flat[6]["content"] == "5 and 20."
    # two results in a row: one user turn; no tools listed: no system message added
    two = tool_fallback([CONVERSATION[1], CONVERSATION[2], CONVERSATION[3], CONVERSATION[5]])
    assert [m["role"] for m in two] == ["user", "assistant", "user"]
    assert two[2]["content"].count(TOOL_RESPONSE[0]) == 2
    assert tool_fallback([{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tokenizer():
    from train.common import load_tokenizer

    return load_tokenizer(None)


def test_training_learns_the_calls_not_the_results(tokenizer):
    from synth.chat import encode, supports_tools

    assert not supports_tools(tokenizer)  # SmolLM2: the fallback
    enc = encode(tokenizer, CONVERSATION, "sft", tools=json.dumps([TOOLS]))
    text = tokenizer.decode(enc.input_ids)
    learned = tokenizer.decode([t for t, m in zip(enc.input_ids, enc.mask, strict=True) if m])
    assert "<tool_response>" in text and "You can call functions" in text
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": "4*5"}}</tool_call>' in learned
    assert "5 and 20." in learned and "Two sums." in learned
    assert "<tool_response>" not in learned and "You can call functions" not in learned
    # the same rendering as generation: the engine is asked with tool_fallback's turns
    assert text == tokenizer.apply_chat_template(tool_fallback(CONVERSATION, [TOOLS]), tokenize=False)


def test_a_template_with_tool_support_gets_tools_and_calls_natively(tokenizer):
    import copy

    from synth.chat import encode, render, supports_tools

    native = copy.deepcopy(tokenizer)
    native.chat_template = TOOL_TEMPLATE
    assert supports_tools(native)
    text = render(native, CONVERSATION, tools=[TOOLS])
    assert text.startswith("<|im_start|>system\nTOOLS: calculator<|im_end|>")
    assert '<call>calculator {"expression": "2+3"}</call>' in text  # arguments as an object
    assert "<tool_call>" not in text
    enc = encode(native, CONVERSATION, "sft", tools=[TOOLS])
    learned = native.decode([t for t, m in zip(enc.input_ids, enc.mask, strict=True) if m])
    assert learned == (
        'Two sums.<call>calculator {"expression": "2+3"}</call><|im_end|>'
        '<call>calculator {"expression": "4*5"}</call><|im_end|>5 and 20.<|im_end|>'
    )  # the calls and the answer; not the tool turns


# -- records ---------------------------------------------------------------------------------
def test_tool_fields_are_additive_in_the_record_model():
    old = '{"id": "a", "kind": "sft", "messages": [{"role": "user", "content": "hi", "name": null}]}'
    rec = record_from_json(old)
    assert rec.tools is None and '"tool_calls"' not in rec.to_json() and '"tools"' not in rec.to_json()
    assert (
        Message(role="user", content="hi").model_dump_json() == '{"role":"user","content":"hi","name":null}'
    )
    calls = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    turn = Message.model_validate({"role": "assistant", "content": "", "tool_calls": calls})
    assert turn.tool_calls[0].type == "function"
    for bad in (
        {"role": "assistant", "content": ""},  # empty without a call
        {"role": "user", "content": "x", "tool_calls": calls},  # only the assistant calls
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c", "function": {"name": "", "arguments": ""}}],
        },
    ):
        with pytest.raises(ValueError):
            Message.model_validate(bad)
    sft = SFTRecord(id="t", messages=[Message(role="user", content="q"), turn,
                                      Message(role="tool", content="1", tool_call_id="c", name="f"),
                                      Message(role="assistant", content="one")], tools=[TOOLS])  # fmt: skip
    assert record_from_json(sft.to_json(), "sft") == sft


# -- the recipe, scripted -------------------------------------------------------------------------
GOOD = {
    "calculator": {"expression": "17 * 23"},
    "python": {"code": "print(sum(range(10)))"},
    "search": {"query": "library opening hours"},
    "list_dir": {"path": "/notes"},
    "read_file": {"path": "/notes/todo.txt"},
    "write_file": {"path": "/notes/a.txt", "text": "hi"},
    "make_dir": {"path": "/work"},
    "delete_file": {"path": "/notes/ideas.txt"},
    "days_between": {"start": "2024-01-01", "end": "2024-03-01"},
    "convert_temperature": {"value": 30, "to": "fahrenheit"},
}
# the second trace of each single-step request fails its own way
BAD_TURN = {
    "calculator": '<tool_call>{"name": "calculator", "arguments": {"expression": "17 * 23"',  # bad_json
    "python": '<tool_call>{"name": "python", "arguments": {"code": "import sys; sys.exit(3)"}}',  # execution
    "search": '<tool_call>{"name": "web_search", "arguments": {"query": "hours"}}',  # unknown_tool
    "list_dir": '<tool_call>{"name": "list_dir", "arguments": {"folder": "/"}}',  # schema_violation
    "days_between": '<tool_call>{"arguments": {"start": "2024-01-01"}}',  # bad_format
    "convert_temperature": "It is about 86 degrees.",  # answers without a call: no_tool_call
}


def scripted(msgs, j, sampling):
    """The model, by prompt: requests, APIGen cases, judge verdicts and ReAct turns."""
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    if system.startswith("You write realistic"):
        m = re.search(r"Tool: (\w+)|one of them to (\w+)", last)
        name = m.group(1) or m.group(2)
        return f"Request: Please use {name} {'twice ' if m.group(2) else ''}for my task number {j}."
    if system.startswith("You write test cases"):
        name = re.findall(r'"name": "(\w+)"', last)[-1]
        if name == "read_file" and j == 1:
            return "I cannot think of one."  # no_query
        called = "read_file" if name == "list_dir" and j == 1 else name  # wrong_function
        return f"Query: Run {name} for me, case {j}.\nCall: " + json.dumps(
            {"name": called, "arguments": GOOD[called]}
        )
    if system.startswith("You check function calls"):
        return "Score: 2\nRationale: no." if "delete_file" in last else "Score: 8\nRationale: fine."
    start = max(
        i for i, m in enumerate(msgs) if m["role"] == "user" and not m["content"].startswith(TOOL_RESPONSE[0])
    )
    query = msgs[start]["content"]
    results = sum(m["content"].startswith(TOOL_RESPONSE[0]) for m in msgs[start:])
    if query.startswith("Run "):  # the answer of an APIGen call
        return "Done: the function answered."
    name, multi = re.search(r"use (\w+)", query).group(1), "twice" in query
    call = "\n<tool_call>" + json.dumps({"name": name, "arguments": GOOD[name]})
    if results == 0:
        if j == 1 and not multi and name in BAD_TURN:
            return BAD_TURN[name]
        return ("Just once." if multi and j == 1 else "Let me call it.") + call
    once = any("Just once." in m["content"] for m in msgs[start:])
    if results >= (1 if once or not multi else 2):
        return f"Done: here is what the tool said ({results} results)."
    return "Again." + call


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import ScriptedEngine

    from synth.recipe import run_recipe
    from synth.recipes.tools import ToolsConfig

    out = tmp_path_factory.mktemp("tools") / "run"
    cfg = ToolsConfig(
        out=str(out), k=2, queries_per_tool=1, multi_per_tool=1, apigen_per_function=2, max_calls=3
    )
    run = run_recipe("tools", cfg, ScriptedEngine(scripted))
    run.close()
    return out


def test_the_recipe_keeps_executed_traces_and_rejects_the_rest_with_reasons(scripted_run):
    from synth.store import Store

    store = Store(scripted_run, read_only=True)
    try:
        funnel = {f["stage"]: f for f in store.funnel()}
        outcomes = store.get_meta("outcomes")
        unexplained = store.query(
            "SELECT count(*) FROM records WHERE NOT kept AND (reason IS NULL OR reason = '')"
        )
        traces = list(store.iter_records("check"))
        pairs = list(store.iter_records("preference_pairs"))
    finally:
        store.close()
    assert unexplained == [(0,)]
    assert funnel["act_0"]["reasons"] == {"bad_json": 1, "bad_format": 1}
    assert funnel["execute_0"]["reasons"] == {"execution_error": 1, "unknown_tool": 1, "schema_violation": 1}
    # the state persists within a trace: deleting the same file twice fails the second time
    assert funnel["execute_1"]["reasons"] == {"execution_error": 1}
    assert funnel["check"]["reasons"] == {"no_tool_call": 1, "too_few_calls": 10}
    assert funnel["apigen_generate"]["reasons"] == {"no_query": 1}
    assert funnel["format_check"]["reasons"] == {"wrong_function": 1}
    assert funnel["semantic_check"]["reasons"] == {"below_threshold": 2}
    # 20 requests x 2 traces: 39 made a call, 6 of them failed at one
    assert outcomes["traces"] == 40 and outcomes["made a call"] == 39 and outcomes["executable"] == 33
    assert outcomes["executable share"] == round(33 / 39, 4) and outcomes["sft rows"] == funnel["sft"]["kept"]
    kept = [t for t in traces if t.kept]
    assert {t.mode for t in kept} == {"single", "multi", "apigen"}
    for t in kept:  # every call in a kept trace ran, and its result is the next turn
        assert t.calls and all(c.ok for c in t.calls) and len(t.calls) >= t.min_calls
    multi = [t for t in kept if t.mode == "multi"]
    assert multi and all(len(t.calls) == 2 for t in multi)
    assert {p.meta["rejected_reason"] for p in pairs} == {
        "bad_json",
        "bad_format",
        "execution_error",
        "unknown_tool",
        "schema_violation",
        "no_tool_call",
    }
    bad_json = next(p for p in pairs if p.meta["rejected_reason"] == "bad_json")
    assert bad_json.strength == "significantly_better" and bad_json.prompt[-1].content.startswith(
        "Please use"
    )
    assert (
        bad_json.chosen.content.startswith("Let me call it.\n<tool_call>")
        and "17 * 23" in bad_json.rejected.content
    )


def test_stats_show_every_reason(scripted_run, capsys):
    from pipelines.cli import main

    assert main(["stats", str(scripted_run)]) == 0
    out = capsys.readouterr().out
    reasons = ["bad_json", "bad_format", "unknown_tool", "schema_violation", "execution_error",
               "no_tool_call", "too_few_calls", "wrong_function", "no_query", "below_threshold"]  # fmt: skip
    for reason in reasons:
        assert reason in out, reason
    assert "executable share: 0.8462" in out  # 33 of the 39 traces that made a call


def test_the_export_carries_tools_and_every_call_with_its_executed_result(scripted_run, tmp_path):
    import datasets

    from pipelines.cli import main
    from synth.store import Store
    from train.data import load_splits, validate_sft

    out = tmp_path / "ds"
    assert main(["export", str(scripted_run), "--to", str(out), "--test-fraction", "0"]) == 0
    card = (out / "README.md").read_text()
    assert "config_name: sft_tools" in card and "tool-calling" in card and "`tools`" in card
    rows = datasets.load_dataset(str(out), "sft_tools", cache_dir=str(tmp_path / "hf"))["train"]
    assert "tools" in rows.column_names and len(rows) > 0
    store = Store(scripted_run, read_only=True)
    traces = {t.id: t for t in store.iter_records("check", kept=True)}
    store.close()
    for row in rows:
        tools = json.loads(row["tools"])  # TRL's SFTTrainer parses the column the same way
        names = {t["function"]["name"] for t in tools}
        msgs = row["messages"]
        executed = iter(c for c in traces[row["id"]].calls)
        for i, m in enumerate(msgs):
            if not m["tool_calls"]:
                continue
            (call,) = m["tool_calls"]
            result = msgs[i + 1]
            assert call["function"]["name"] in names
            assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
            ran = next(executed)
            assert ran.ok and (ran.name, ran.arguments) == (
                call["function"]["name"],
                call["function"]["arguments"],
            )
            assert result["content"] == ran.output and result["name"] == ran.name
        assert msgs[-1]["role"] == "assistant" and not msgs[-1]["tool_calls"]
    train, _ = load_splits(out / "sft_tools", "sft")
    validate_sft(train)  # the trainer accepts the tools column and the calls
    flat = datasets.load_dataset(str(out), "sft", cache_dir=str(tmp_path / "hf"))["train"]
    row = next(r for r in flat if r["id"] == rows[0]["id"])
    assert row["messages"][0]["role"] == "system" and "<tool_call>" in row["messages"][2]["content"]
    pref = datasets.load_dataset(str(out), "preference", cache_dir=str(tmp_path / "hf"))["train"]
    assert len(pref) == 6 and all("<tool_call>" in r["chosen"][0]["content"] for r in pref)


def test_the_trainer_tokenizes_tool_rows(scripted_run, tmp_path, tokenizer):
    from synth.export import export_dataset
    from synth.store import Store
    from train.data import load_splits
    from train.sft import tokenize_row

    store = Store(scripted_run, read_only=True)
    recs = list(store.iter_records("sft", kept=True))
    store.close()
    export_dataset([], [], tmp_path / "ds", {}, test_fraction=0.0, extra={"sft_tools": recs})
    train, _ = load_splits(tmp_path / "ds" / "sft_tools", "sft")
    row = train[0]
    enc = tokenize_row(row, tokenizer, 4096)
    learned = tokenizer.decode([t for t, m in zip(enc["input_ids"], enc["mask"], strict=True) if m])
    assert "<tool_call>" in learned and "<tool_response>" not in learned


def test_bad_options_stop_before_a_run_exists(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "r"
    assert main(["run", "tools", "--out", str(out), "--core-tools", "python,web"]) == 2
    assert "core_tools: no core tool web; choose from python, calculator, search" in capsys.readouterr().err
    assert main(["run", "tools", "--out", str(out), "--tools", str(tmp_path / "none.py")]) == 2
    assert "none.py: no such file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "tools", "--out", str(out), "--corpus", str(empty)]) == 2
    assert "no .md or .txt documents" in capsys.readouterr().err
    needs = tmp_path / "needs.py"
    needs.write_text("import sympy\n\ndef f(x: int) -> int:\n    'Double.'\n    return 2 * x\n")
    assert main(["run", "tools", "--out", str(out), "--tools", str(needs)]) == 2
    assert (
        "does not import in the sandbox (ModuleNotFoundError: No module named 'sympy')"
        in capsys.readouterr().err
    )
    zero = ["--queries-per-tool", "0", "--multi-per-tool", "0", "--apigen-per-function", "0"]
    assert main(["run", "tools", "--out", str(out), *zero]) == 2
    assert "nothing to generate" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "tools", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--tools TEXT" in text and "--corpus TEXT" in text and "--core-tools A,B" in text


# -- structured output: --structured-calls ----------------------------------------------------------
class ValidatingEngine:
    """An engine that checks replies against the request's constraint and asks again for invalid
    ones, as the ``hf`` engine does (``synth.engines.structured.generate_checked``, lenient)."""

    name, model = "checked", "checked-model"

    def __init__(self, reply):
        self.reply, self.schemas = reply, []

    def _generate(self, requests, sampling):
        from synth.engines.base import Completion

        self.schemas.append(sampling.json_schema)
        return [
            [
                Completion(self.reply(list(r.messages), j, sampling), 5, 3, finish_reason="stop")
                for j in range(sampling.n)
            ]
            for r in requests
        ]

    def generate(self, requests, sampling):
        from synth.engines.structured import generate_checked

        return generate_checked(self._generate, requests, sampling, retries=2, lenient=True)


def structured_reply(msgs, j, sampling):
    """Requests for the calculator; turns: a call with a thought in tags (its JSON is cut out), a call
    whose arguments miss the schema (asked again: a retry's seed moved on), then ``{"answer": ...}``."""
    if msgs[0]["role"] == "system" and msgs[0]["content"].startswith("You write realistic"):
        return f"Request: Please use calculator to multiply 17 by 23, case {j}."
    if msgs[-1]["content"].startswith(TOOL_RESPONSE[0]):
        return json.dumps({"answer": "17 * 23 is 391."})
    retry = sampling.seed != 0
    if j == 1 and not retry:
        return json.dumps({"name": "calculator", "arguments": {"expr": "17 * 23"}})  # schema_violation
    return (
        "I will multiply.\n"
        + TOOL_CALL[0]
        + json.dumps({"name": "calculator", "arguments": GOOD["calculator"]})
    )


@pytest.mark.parametrize("structured", [False, True])
def test_structured_calls_ask_for_schema_valid_turns(tmp_path, structured):
    from synth.recipe import run_recipe
    from synth.recipes.tools import ToolsConfig
    from synth.stages.tools.stages import turn_schema

    cfg = ToolsConfig(out=str(tmp_path / "run"), core_tools=["calculator"], tools="", k=2, queries_per_tool=1,
                      multi_per_tool=0, max_calls=2, seed=0, structured_calls=structured)  # fmt: skip
    engine = ValidatingEngine(structured_reply)
    run = run_recipe("tools", cfg, engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    outcomes = run.store.get_meta("outcomes")
    rows = list(run.store.iter_records("sft", kept=True))
    run.close()
    asked = [s for s in engine.schemas if s is not None]
    if not structured:  # the reply that misses the schema is executed, and fails there
        assert not asked and funnel["execute_0"]["reasons"] == {"schema_violation": 1}
        assert outcomes["executable share"] == 0.5 and len(rows) == 1
        assert rows[0].messages[-1].content == json.dumps({"answer": "17 * 23 is 391."})  # read as text
        return
    assert asked and all(s == turn_schema(core_specs(["calculator"])) for s in asked)
    assert funnel["act_0"]["rejected"] == 0 and funnel["execute_0"]["reasons"] == {}
    assert outcomes["executable share"] == 1.0 and len(rows) == 2 == funnel["check"]["kept"]
    for r in rows:
        user, call, result, answer = r.messages
        assert call.tool_calls[0].function.name == "calculator" and call.content == ""  # the JSON alone
        assert json.loads(call.tool_calls[0].function.arguments) == GOOD["calculator"]
        assert result.role == "tool" and result.content == "391" and answer.content == "17 * 23 is 391."
        assert r.meta["call_formats"] == ["bare_json"]


@pytest.mark.slow
def test_structured_calls_on_real_vllm_leave_no_malformed_turn(tmp_path, vllm_engine):
    """The real engine (vLLM's constrained decoding, embedded model): with ``--structured-calls`` no
    turn of any trace is malformed JSON, an unknown tool or arguments outside the tool's schema."""
    from synth.recipe import run_recipe
    from synth.recipes.tools import ToolsConfig

    cfg = ToolsConfig(out=str(tmp_path / "run"), core_tools=["calculator"], tools="", k=2, queries_per_tool=1,
                      multi_per_tool=0, max_calls=2, max_tokens=64, request_max_tokens=40, seed=0,
                      structured_calls=True)  # fmt: skip
    run = run_recipe("tools", cfg, vllm_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    traces = list(run.store.iter_records("act_0"))
    run.close()
    assert funnel["act_0"]["rows_in"] > 0
    # every reply the constraint let finish is a call (pending execution) or a JSON answer: plain prose
    # would fail this
    finished = [t for t in traces if not t.meta.get("structured_errors")]
    assert finished and all(t.pending or t.meta.get("answer_format") == "json" for t in finished), traces
    reasons = {r for f in funnel.values() for r in f["reasons"]}
    assert not reasons & {"bad_json", "bad_format", "unknown_tool", "schema_violation"}, funnel
