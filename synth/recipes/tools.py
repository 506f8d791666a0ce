"""Tool use (Llama 3 section 4.3.5), as a recipe, every call executed:

    tools (python, calculator, search over your documents, your functions) -+
       -> requests needing one call / at least two -> K traces, ReAct-style: a turn calls a tool,
          the call is checked and run, its result comes back, ... until the answer -> check
          -> SFT rows (OpenAI tool-calling shape + tools), kept trace vs failing one -> preference rows
    your functions' documentation -> request + call -> format, execution, semantic judge (APIGen)
       -> the answer -> SFT rows

What the paper does, in its words and numbers: Llama 3 is trained to call Brave Search, a Python
interpreter and Wolfram Alpha, and to use tools it has never seen from their definitions (zero-shot
tool use). For single-step tool use it few-shot generates synthetic user prompts that by construction
need a call to one of its core tools, then the tool calls, executes them and adds their output to the
context, then prompts for the final answer, and it "filter[s] around 30% of this dataset to remove tool
calls that cannot be executed or other formatting issues". For multi-step tool use it generates
prompts that need at least two tool calls and answers them with interleaved reasoning and calls, as
ReAct does. For zero-shot tool use it mines functions and their definitions (The Stack), drops those
with missing docstrings or that do not execute, and writes the user query for each call. Its human
annotators compare two assistant messages with the same context at the message level.

Here: the core tools run without the network: ``python`` (the program runs in the sandbox),
``calculator`` (SymPy, in place of Wolfram Alpha) and ``search`` (BM25 over ``--corpus``, the user's
documents, in place of web search); user tools are the documented, type-hinted functions of a Python
file (``--tools FILE.py``; default: a shipped stateful file-system environment), turned into OpenAI
function schemas and executed in the sandbox. The model writes ``queries_per_tool`` single-step and
``multi_per_tool`` multi-step requests per tool and ``k`` traces per request; every call is executed,
checked against its schema, and kept or rejected with the reason ('bad_json', 'bad_format',
'unknown_tool', 'schema_violation', 'execution_error', 'timeout', then the check's 'no_tool_call',
'too_few_calls', 'step_limit'); run meta ``outcomes`` gives the executable share (Llama 3 kept about
70%). Function calling from documentation follows APIGen's three checks: format, execution, and an LLM
judge of whether the result answers the request (``semantic_threshold``). The defaults are sized for a
laptop and the embedded model, whose yield is near zero; the mechanics are the same with a teacher.

Beyond the paper: the calls and results are kept in OpenAI's tool-calling shape and exported as a
``sft_tools`` config with a ``tools`` column (what TRL's SFTTrainer reads), and in the plain ``sft``
config rendered by ``synth.chat.tool_fallback`` (the rendering generation used) for templates without
tool support; preference rows pair a kept trace with a failing one of the same request at the turn
where it failed (Llama 3's message-level comparison); a stateful tool keeps its state across a trace's
turns by replaying the trace's earlier calls in each fresh sandbox; ``structured_calls`` asks for every
turn as structured output (``synth.stages.tools.stages.turn_schema``: a call whose arguments fit the
tool's schema, or ``{"answer": ...}``), constrained on vLLM and OpenAI servers, validated and asked
again on ``hf`` (off by default: the rows then hold what the model wrote unconstrained).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from pathlib import Path

from sandboxes import Limits
from synth.config import ConfigError, option
from synth.pipeline import Rows, Run
from synth.prompts import load_prompt
from synth.recipe import Outputs, RecipeConfig, recipe
from synth.stages.execute import Sandbox
from synth.stages.judge import JudgeStage
from synth.stages.tools.calculator import Calculator
from synth.stages.tools.calls import STOP
from synth.stages.tools.registry import CORE_TOOLS, Toolbox, core_specs, function_specs, sandbox_import_error
from synth.stages.tools.search import SearchIndex, read_documents
from synth.stages.tools.stages import (
    Act,
    Check,
    ExecuteCalls,
    FormatCheck,
    ToolPairs,
    TraceRows,
    WriteCalls,
    WriteQueries,
    outcome_counts,
    semantic_variables,
    turn_schema,
)

DATA = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "tools"
DEFAULT_CORPUS = str(DATA / "corpus")
DEFAULT_TOOLS = str(DATA / "filesystem.py")
SHIPPED_LICENSE = "apache-2.0 (written for synth)"


@dataclass(kw_only=True)
class ToolsConfig(RecipeConfig):
    core_tools: list[str] = option(
        default_factory=lambda: list(CORE_TOOLS),
        help=f"Core tools offered ({', '.join(CORE_TOOLS)}); empty for none.",
    )
    tools: str = option(
        DEFAULT_TOOLS,
        "Python file whose public functions with docstrings and type hints become tools (run in the "
        "sandbox, standard library only); '' for none. Default: the shipped file-system environment.",
    )
    corpus: str = option(DEFAULT_CORPUS, "Folder of .md/.txt documents the search tool searches.")
    k: int = option(2, "Traces sampled per request (Llama 3 samples 10-30 per prompt elsewhere).", min=1)
    queries_per_tool: int = option(2, "Single-step requests (one call) written per tool.", min=0)
    multi_per_tool: int = option(1, "Multi-step requests (two calls or more) written per tool.", min=0)
    apigen_per_function: int = option(
        2, "Requests with their call written per user function from its documentation (APIGen).", min=0
    )
    max_calls: int = option(3, "Tool calls a trace may make before it must answer.", min=1)
    max_tokens: int = option(256, "Max new tokens of a turn of a trace.", min=1)
    request_max_tokens: int = option(
        96, "Max new tokens of a written request (single-, multi-step or APIGen with its call).", min=1
    )
    search_k: int = option(3, "Passages one search returns.", min=1)
    semantic_threshold: float = option(
        6.0, "APIGen's semantic check: keep calls the judge rates at least this (1-10).", min=1, max=10
    )
    judge_max_tokens: int = option(48, "Max tokens of the semantic judge's reply.", min=1)
    pairs_per_prompt: int = option(1, "Kept-over-failing preference rows per request (0: none).", min=0)
    structured_calls: bool = option(
        False,
        "Ask for every turn of a trace as structured output: a call of a listed tool whose arguments fit "
        'its schema, or {"answer": ...} (constrained decoding on vllm and openai; validate and retry on '
        "hf, which cuts a valid call out of a reply and asks again for an invalid one).",
    )
    calculator_timeout: float = option(5.0, "Seconds one calculator expression may take.", gt=0)
    backend: str = option(
        "local", "Sandbox backend: local (bubblewrap) or docker.", choices=("local", "docker")
    )
    unsafe_no_isolation: bool = option(
        False, "Run tool calls without isolation (local backend; trusted hosts only)."
    )
    timeout_s: float = option(10.0, "Wall-clock limit of one call run in the sandbox, seconds.", min=0.1)
    memory_mb: int = option(512, "Memory limit of one call run in the sandbox, MiB.", min=16)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [t for t in self.core_tools if t not in CORE_TOOLS]
        if unknown:
            raise ConfigError(
                f"core_tools: no core tool {', '.join(unknown)}; choose from {', '.join(CORE_TOOLS)}"
            )

    def sandbox(self) -> Sandbox:
        limits = Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return Sandbox(backend=self.backend, unsafe_no_isolation=self.unsafe_no_isolation, limits=limits)

    def check(self) -> None:
        if not self.core_tools and not self.tools:
            raise ConfigError("no tools: give --core-tools and/or --tools FILE.py")
        if not (self.queries_per_tool or self.multi_per_tool or (self.tools and self.apigen_per_function)):
            raise ConfigError(
                "nothing to generate: queries_per_tool, multi_per_tool and apigen_per_function are 0"
            )
        if self.tools:
            specs, skipped = function_specs(self.tools)
            if not specs and not self.core_tools:
                raise ConfigError(f"--tools {self.tools}: no usable function ({skipped or 'none defined'})")
        if "search" in self.core_tools:
            next(read_documents(self.corpus))  # a missing or empty corpus stops here
        if "python" in self.core_tools or self.tools:
            self.sandbox().check()  # no isolation here: stop before any work, not at the first call
        if self.tools:  # the functions run in the sandbox: they must import there
            problem = sandbox_import_error(Path(self.tools).read_text(encoding="utf-8"), self.sandbox())
            if problem:
                raise ConfigError(f"--tools {self.tools}: does not import in the sandbox ({problem}); "
                                  "a tools file may use the standard library only")  # fmt: skip


@recipe("tools", ToolsConfig)
def tools(run: Run, cfg: ToolsConfig) -> Outputs:
    """Tools -> requests -> K ReAct traces, every call executed and checked; + APIGen; + pairs."""
    llm = dict(engine=run.engine, round=cfg.round)
    bs = cfg.batch_size
    sandbox = cfg.sandbox()

    # 1. the tools: core tools, the user's functions (schemas from hints and docstrings), the corpus
    core = core_specs(cfg.core_tools)
    functions, skipped, module_text = [], {}, None
    if cfg.tools:
        functions, skipped = function_specs(cfg.tools)
        module_text = Path(cfg.tools).read_text(encoding="utf-8")
    run.store.set_meta("tools_skipped", skipped)
    run.store.set_meta("data_sources", data_sources(cfg))
    specs = core + functions
    sources = [run.source(name, rows) for name, rows in (("tools", core), ("functions", functions)) if rows]
    tool_rows = functools.reduce(operator.add, sources)
    index, topics = None, ""
    if "search" in cfg.core_tools:
        run.source("documents", read_documents(cfg.corpus))
        index = SearchIndex(read_documents(cfg.corpus))
        topics = ", ".join(dict.fromkeys(p.title for p in index.passages))
    toolbox = Toolbox(specs, sandbox, index=index, calculator=Calculator(cfg.calculator_timeout),
                      module_text=module_text, search_k=cfg.search_k)  # fmt: skip
    lines = "\n".join(f"- {s.name}: {s.description}" for s in specs)
    structured = dict(json_schema=turn_schema(specs)) if cfg.structured_calls else {}
    act = cfg.sampling(stop=STOP, **structured)  # k traces per request; a turn stops after its call
    turn = cfg.sampling(n=1, stop=STOP, **structured)
    llm_act = dict(llm, structured=cfg.structured_calls)
    try:
        # 2. synthetic requests: one call (single-step), at least two (multi-step)
        requests = []
        short = dict(max_tokens=cfg.request_max_tokens, stop=("\n\n",))  # a request: one paragraph
        if cfg.queries_per_tool:
            sampling = cfg.sampling(n=cfg.queries_per_tool, **short)
            write = WriteQueries(mode="single", sampling=sampling, topics=topics, **llm)
            requests.append(run.map(write, tool_rows, bs))
        if cfg.multi_per_tool:
            sampling = cfg.sampling(n=cfg.multi_per_tool, **short)
            write = WriteQueries(mode="multi", sampling=sampling, tools_lines=lines, topics=topics, **llm)
            requests.append(run.map(write, tool_rows, bs))

        # 3. K traces per request, ReAct-style: a turn, its call checked and executed, the next turn ...
        finished: list[Rows] = []
        loop: Rows | None = None
        if requests:
            acted = run.map(
                Act(step=0, toolbox=toolbox, sampling=act, **llm_act),
                functools.reduce(operator.add, requests),
                bs,
            )
            stages = [acted]
            for s in range(cfg.max_calls):
                executed = run.map(ExecuteCalls(step=s, toolbox=toolbox, sandbox=sandbox), acted, bs * cfg.k)
                acted = run.map(
                    Act(step=s + 1, toolbox=toolbox, sampling=turn, **llm_act), executed, bs * cfg.k
                )
                stages += [executed, acted]
            loop = functools.reduce(operator.add, (r.all for r in stages))
            finished.append(functools.reduce(operator.add, stages))

        # 4. function calling from documentation (APIGen): format, execution, semantic checks, answer
        if functions and cfg.apigen_per_function:
            sampling = cfg.sampling(n=cfg.apigen_per_function, max_tokens=cfg.request_max_tokens)
            write = WriteCalls(sampling=sampling, **llm)
            calls = run.map(write, Rows(("functions",)), bs)
            formatted = run.map(FormatCheck(toolbox), calls, 1000)
            ran = run.map(
                ExecuteCalls(name="apigen_execute", toolbox=toolbox, sandbox=sandbox), formatted, bs
            )
            rubric = load_prompt("tools/semantic")
            judge = JudgeStage("semantic_check", run.engine, rubric, semantic_variables, score="semantic",
                               threshold=cfg.semantic_threshold, max_tokens=cfg.judge_max_tokens)  # fmt: skip
            judged = run.map(judge, ran, bs)
            finished.append(
                run.map(
                    Act(name="apigen_answer", step=1, toolbox=toolbox, sampling=turn, **llm_act), judged, bs
                )
            )

        # 5. every finished trace: an answer after enough executed calls -> SFT rows
        checked = run.map(Check(), functools.reduce(operator.add, finished).last(), 1000)
        sft = run.map(TraceRows(toolbox), checked, 1000)

        # 6. preference rows: a kept trace over a failing one of the same request
        preference = []
        if loop is not None and cfg.pairs_per_prompt:
            last = (loop + checked.all).last()
            preference.append(run.grouped(ToolPairs(toolbox, cfg.pairs_per_prompt), last, bs * cfg.k))
        everything = (loop + checked.all).last() if loop is not None else checked.all
        outcomes = outcome_counts(run.records(everything), run.count(sft),
                                  sum(run.count(p) for p in preference))  # fmt: skip
        run.store.set_meta("outcomes", outcomes)
    finally:
        toolbox.close()
    return Outputs(prompts=None, sft=[sft], preference=preference, extra={"sft_tools": [sft]})


def data_sources(cfg: ToolsConfig) -> list[dict[str, str]]:
    """The input data the run names in its data card, with licences."""
    out = []
    if "search" in cfg.core_tools:
        shipped = Path(cfg.corpus).resolve() == Path(DEFAULT_CORPUS).resolve()
        out.append({"name": "search corpus", "path": Path(cfg.corpus).name,
                    "license": SHIPPED_LICENSE if shipped else "the user's (not recorded)"})  # fmt: skip
    if cfg.tools:
        shipped = Path(cfg.tools).resolve() == Path(DEFAULT_TOOLS).resolve()
        out.append({"name": "tool functions", "path": Path(cfg.tools).name,
                    "license": SHIPPED_LICENSE if shipped else "the user's (not recorded)"})  # fmt: skip
    return out
