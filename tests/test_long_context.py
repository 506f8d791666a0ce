"""`synth run long-context`: token chunks and length buckets in the model's own tokens, the import graph
of a real repository built here (its dependents exact), the repository checks in the real sandbox, the
whole recipe (scripted model, then the embedded one), export with its data card, and kill -9 / resume."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from pipelines.cli import main
from sandboxes import Limits
from synth.config import ConfigError, build
from synth.recipe import run_recipe
from synth.recipes.long_context import LongContextConfig
from synth.records import Message, SFTRecord, Unparsed
from synth.stages.execute import Sandbox
from synth.stages.llm import Reject
from synth.stages.long_context.items import DependentsAnswer, MissingFile, RepoTask
from synth.stages.long_context.qa import parse_qa
from synth.stages.long_context.repo import analyse, read_repos
from synth.stages.long_context.repo_tasks import CheckRepo, FindKeyFiles, GradeDependents, parse_paths
from synth.stages.long_context.summary import parse_summary
from synth.stages.long_context.tokens import LengthBuckets, Lengths, Tokens, label, resolve_lengths

# -- a real repository: package `shop`, whose money.py six files import, each in another way -----------
MONEY = """\
class Money:
    def __init__(self, cents):
        self.cents = cents

    def __eq__(self, other):
        return isinstance(other, Money) and other.cents == self.cents


def add(a, b):
    return Money(a.cents + b.cents)
"""
SHOP = {
    "shop/__init__.py": '"""A shop."""\n',
    "shop/money.py": MONEY,
    "shop/cart.py": "from .money import Money, add\n\n\nclass Cart:\n    def __init__(self):\n"
    "        self.items = []\n\n    def total(self):\n        t = Money(0)\n        for item in self.items:\n"
    "            t = add(t, item)\n        return t\n",
    "shop/tax.py": "from shop.money import Money\n\n\ndef with_tax(m, rate=20):\n"
    "    return Money(m.cents * (100 + rate) // 100)\n",
    "shop/invoice.py": "import shop.money as m\n\n\ndef line(cents):\n    return m.Money(cents)\n",
    "shop/report.py": "from shop import money\n\n\ndef zero():\n    return money.Money(0)\n",
    "shop/discounts/__init__.py": "",
    "shop/discounts/coupons.py": "from ..money import Money, add\n\n\ndef apply(x, off):\n"
    "    return add(x, Money(-off))\n",
    "shop/catalog.py": "def price(cents):\n    from shop.money import Money  # inside a function: counts\n\n"
    "    return Money(cents)\n",
    # decoys: a similar name, an import in a string and a comment, a same-named module elsewhere
    "shop/moneybags.py": "X = 1\n",
    "shop/util.py": 'import json\n\nfrom shop.moneybags import X\n\nTEXT = "from shop import money"\n'
    "# import shop.money\nDUMP = json.dumps(X)\n",
    "other/__init__.py": "",
    "other/money.py": "RATE = 2\n",
    "other/use.py": "from . import money\n\nDOUBLE = money.RATE * 2\n",
    "scripts/run.py": "from .. import nothing  # beyond the top: no dependency\n",
    "tests/test_shop.py": "from shop.cart import Cart\nfrom shop.catalog import price\n"
    "from shop.tax import with_tax\n\n\n"
    "def test_tax():\n    assert with_tax(price(100)).cents == 120\n\n\n"
    "def test_cart_total():\n    cart = Cart()\n    cart.items += [price(100), price(50)]\n"
    "    assert cart.total().cents == 150\n",
}
DEPENDENTS = [
    "shop/cart.py",
    "shop/catalog.py",
    "shop/discounts/coupons.py",
    "shop/invoice.py",
    "shop/report.py",
    "shop/tax.py",
]


def write_repo(root: Path, files: dict[str, str]) -> Path:
    for path, src in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(src)
    return root


@pytest.fixture
def shop(tmp_path) -> Path:
    return write_repo(tmp_path / "repos" / "shop", SHOP)


def test_the_dependents_of_a_real_repository_are_exact(shop):
    (shop / "broken.py").write_text("def (:\n")  # a file that does not parse is reported, not fatal
    repo = next(read_repos(shop.parent))
    index = analyse(repo.files)
    assert index.dependents("shop/money.py") == DEPENDENTS
    assert index.dependents("other/money.py") == ["other/use.py"]
    assert index.dependents("shop/moneybags.py") == ["shop/util.py"]
    assert index.imports["scripts/run.py"] == set() and index.imports["shop/util.py"] == {"shop/moneybags.py"}
    assert index.dependents("shop/__init__.py") == []  # importing shop.money is not a dependency on shop
    assert list(index.unparsed) == ["broken.py"]
    assert index.key_files(5) == [("shop/money.py", DEPENDENTS)] and index.key_files(7) == []
    assert index.tests == ["tests/test_shop.py"]

    # the recipe's stage: one task, the file out, its dependents and their module names
    (task,) = FindKeyFiles(min_dependents=5)([repo])
    assert (
        isinstance(task, RepoTask) and task.removed == "shop/money.py" and "shop/money.py" not in task.files
    )
    assert task.dependents == DEPENDENTS and task.dependent_modules[:2] == ["shop.cart", "shop.catalog"]
    (none,) = FindKeyFiles(min_dependents=7)([next(read_repos(shop.parent))])
    assert none.verdicts[-1].reason == "no_key_file" and "shop/money.py, by 6" in none.meta["detail"]


def test_a_src_layout_and_a_single_repository_folder(tmp_path):
    files = {f"src/pkg/m{i}.py": "from pkg import core\n" for i in range(5)}
    write_repo(tmp_path / "one", {**files, "src/pkg/__init__.py": "", "src/pkg/core.py": "X = 1\n"})
    (repo,) = list(read_repos(tmp_path))  # a folder of repositories: each sub-folder
    index = analyse(repo.files)
    assert index.roots == ["src", "."] and index.dependents("src/pkg/core.py") == sorted(files)
    assert [r.id for r in read_repos(tmp_path / "one" / "src")] == ["src"]  # holds a package: one repository


def sandbox() -> Sandbox:
    return Sandbox(limits=Limits(timeout_s=20, memory_mb=512))


def missing(task: RepoTask, code: str, j: int = 0) -> MissingFile:
    return MissingFile(
        id=f"{task.id}#file{j}", task_id=task.id, removed=task.removed, request="Write it.", reply=code,
        code=code, dependents=task.dependents, dependent_modules=task.dependent_modules, files=task.files,
        tests=task.tests, roots=task.roots, meta={"test_modules": task.meta["test_modules"]},
    )  # fmt: skip


def test_the_repository_checks_in_the_sandbox(shop):
    (task,) = FindKeyFiles()([next(read_repos(shop.parent))])
    sb = sandbox()
    (original,) = CheckRepo(name="check_original", mode="original", sandbox=sb, limits=sb.limits)([task])
    assert original.kept and original.meta["check_original"]["status"] == "ok"
    (removed,) = CheckRepo(name="check_removed", mode="removed", sandbox=sb, limits=sb.limits)([task])
    assert removed.kept and removed.meta["check_removed"]["reason"] == "import_failed"

    rewrites = [
        missing(task, MONEY, 0),  # the file as it was: passes
        missing(task, MONEY.replace("def add", "def plus"), 1),  # cart imports add: a dependent fails
        missing(task, MONEY.replace("a.cents + b.cents", "a.cents - b.cents"), 2),  # imports; a test fails
        missing(task, "import os\nos._exit(0)\n", 3),  # exits 0 before the harness's end
    ]
    out = CheckRepo(name="check_rewrite", mode="rewrite", sandbox=sb, limits=sb.limits)(rewrites)
    assert [r.verdicts[-1].reason for r in out] == [None, "import_failed", "tests_failed", "exited_early"]
    row = out[0]
    assert isinstance(row, SFTRecord) and row.messages[-1].content.startswith("```python\nclass Money")
    assert row.meta["task"] == "repo_missing_file"
    assert "shop/cart.py" in out[1].meta["check_rewrite"]["stderr"]
    assert "test_cart_total" in out[2].meta["check_rewrite"]["stderr"]

    # a repository whose dependents guard their imports cannot tell a bad file: the task is dropped
    guarded = {
        **SHOP,
        **{p: "try:\n    import shop.money\nexcept ImportError:\n    pass\n" for p in DEPENDENTS},
    }
    guarded["tests/test_shop.py"] = "def test_nothing():\n    pass\n"
    (task,) = FindKeyFiles()(
        [next(read_repos(write_repo(shop.parent.parent / "g" / "shop", guarded).parent))]
    )
    (undetected,) = CheckRepo(name="check_removed", mode="removed", sandbox=sb, limits=sb.limits)([task])
    assert undetected.verdicts[-1].reason == "removal_undetected"


def test_the_dependents_reply_is_graded_exactly(shop):
    (task,) = FindKeyFiles()([next(read_repos(shop.parent))])
    exact = (
        "The files that import `shop/money.py`:\n- ./shop/cart.py\n- shop.catalog\n- coupons.py\n"
        + "\n".join(f"- {p}" for p in DEPENDENTS[3:])
    )
    assert parse_paths(exact, task) == DEPENDENTS  # ./ dropped, a module name, a unique file name
    wrong = "shop/cart.py\nshop/tax.py\nshop/util.py\nshop/ghost.py\nshop/money.py"
    assert parse_paths(wrong, task) == ["shop/cart.py", "shop/ghost.py", "shop/tax.py", "shop/util.py"]

    def answer(reply: str, j: int) -> DependentsAnswer:
        predicted = parse_paths(reply, task)
        return DependentsAnswer(id=f"a{j}", task_id=task.id, removed=task.removed, request="Which?",
                                reply=reply, predicted=predicted, dependents=task.dependents)  # fmt: skip

    good, bad = GradeDependents()([answer(exact, 0), answer(wrong, 1)])
    assert isinstance(good, SFTRecord) and good.kept and good.scores["dependents_f1"] == 1.0
    assert good.messages[-1].content == exact and good.meta["task"] == "repo_dependents"
    assert bad.verdicts[-1].reason == "dependents_wrong"
    assert bad.scores["dependents_precision"] == 0.5 and bad.scores["dependents_recall"] == 2 / 6
    assert bad.meta["extra"] == ["shop/ghost.py", "shop/util.py"] and len(bad.meta["missing"]) == 4


def test_replies_are_parsed_by_rule():
    assert parse_qa("Question: When was it built?\nAnswer: In 1811.") == ("When was it built?", "In 1811.")
    two = "question 1: What is the rate?\nANSWER: Twenty.\nQuestion 2: And then?\nAnswer: No."
    assert parse_qa(two) == ("What is the rate?", "Twenty.")
    # only the question (small models stop there): its answer comes from a second call
    assert parse_qa("Question: What does the log show? It shows wear.\nMore.") == (
        "What does the log show?",
        None,
    )
    assert parse_qa("What does the log show of the parts?\n") == (
        "What does the log show of the parts?",
        None,
    )
    assert parse_qa("Q: What is the rate here?\nA: Twenty.") == ("What is the rate here?", "Twenty.")
    for text, reason in [("Answer: x", "no_question"), ("I cannot.", "no_question"),
                         ("Question: Why?\nAnswer: ok", "too_short")]:  # fmt: skip
        with pytest.raises(Reject) as e:
            parse_qa(text)
        assert e.value.reason == reason
    assert parse_qa("Question: What did it do?\nAnswer: It rose. Then it fell and", "length")[1] == "It rose."
    assert parse_summary("Summary: The part explains how the colony survives the cold winter.").startswith(
        "The"
    )
    with pytest.raises(Reject):
        parse_summary("Summary: short.")


# -- tokens ------------------------------------------------------------------------------------------
def long_text(n: int, topic: str = "river") -> str:
    places = ["Alder", "Brook", "Cawston", "Dunmore", "Elswick", "Farley", "Greywell", "Hatton"]
    return "\n\n".join(
        f"Paragraph {i}: the {topic} station at {places[i % 8]} recorded {i * 7 % 90 + 3} millimetres "
        f"of rain in month {i % 12 + 1}, and its keeper noted that the water rose by {i % 5 + 1} feet."
        for i in range(n)
    )


def test_chunks_are_cut_in_the_models_tokens_and_rejoin():
    tokens = Tokens(None)  # the embedded model's tokenizer
    text = long_text(12)
    chunks = tokens.split(text, 64)
    assert "".join(chunks) == text and len(chunks) >= 4
    assert all(tokens.count(c) <= 64 + 2 for c in chunks)
    lines = "\n".join(f"item {i} of the list" for i in range(200))  # a line break in every last quarter
    chunks = tokens.split(lines, 64)
    assert "".join(chunks) == lines and all(c.endswith("\n") for c in chunks[:-1])
    flat = " ".join(f"word{i}" for i in range(300))  # no line break: cut at the token limit
    chunks = tokens.split(flat, 64)
    assert "".join(chunks) == flat and all(62 <= tokens.count(c) <= 66 for c in chunks[:-1])
    assert tokens.split("one two", 64) == ["one two"]


def test_lengths_default_to_fractions_of_the_models_context():
    derive = dict(engine_name="hf", engine=None, model=None, tokenizer=None)
    lengths = resolve_lengths(0, 0, [], **derive)
    assert (lengths.context, lengths.chunk, lengths.buckets) == (8192, 512, (1024, 2048, 4096, 8192))
    assert (
        lengths.to_dict()["buckets"] == ["1K", "2K", "4K", "8K"]
        and lengths.context_from == "the model's config"
    )
    paper = resolve_lengths(131072, 8192, [131072, 16384, 65536, 32768], **derive)
    assert paper.buckets == (16384, 32768, 65536, 131072) and label(paper.bucket(20000)) == "32K"
    with pytest.raises(ConfigError, match="chunk_tokens"):
        resolve_lengths(1024, 1024, [], **derive)
    with pytest.raises(ConfigError, match="context length"):
        resolve_lengths(0, 0, [], engine_name="openai", engine=None, model="fake", tokenizer=None)


def test_rows_land_in_buckets_by_their_chat_token_count():
    tokens = Tokens(None)
    stage = LengthBuckets(Lengths(context=400, chunk=50, buckets=(100, 200)), tokens)

    def row(i: int, words: int) -> SFTRecord:
        return SFTRecord(id=f"r{i}", messages=[Message(role="user", content=" ".join(["word"] * words)),
                                               Message(role="assistant", content="ok")])  # fmt: skip

    out = stage([row(0, 10), row(1, 120), row(2, 300), row(3, 500)])
    tok = tokens.tokenizer
    for r in out:  # the count is the chat as the model reads it (template, default system prompt)
        text = tok.apply_chat_template([m.model_dump(exclude_none=True) for m in r.messages], tokenize=False)
        assert r.scores["tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])
    assert [r.meta.get("length_bucket") for r in out[:2]] == ["100", "200"]
    assert [r.verdicts[-1].reason for r in out] == [None, None, "exceeds_buckets", "exceeds_context"]
    assert out[0].scores["length_bucket"] == 100 and "> the context, 400" in out[3].meta["length_detail"]


# -- the recipe -------------------------------------------------------------------------------------
def inputs(tmp_path: Path) -> dict[str, str]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a_rain.md").write_text(long_text(14))  # ~600 tokens: 1K bucket
    (docs / "b_wind.md").write_text(long_text(40, "wind"))  # ~1.6K tokens: 2K bucket
    (docs / "c_snow.txt").write_text(long_text(90, "snow"))  # ~3.7K tokens: beyond the 2K bucket
    (docs / "d_note.md").write_text("Too short to be long.")
    (docs / "e_huge.md").write_text(long_text(300, "fog"))  # beyond the 8K context
    (docs / "skip.py").write_text("not a document")
    write_repo(tmp_path / "repos" / "shop", SHOP)
    return {"corpus": str(docs), "repos": str(tmp_path / "repos")}


def scripted(msgs, j, sampling):
    """Replies by what is asked; right and wrong ones, so every filter has work."""
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    if system.startswith("You answer a question"):  # the answer from the text: its first sentence
        return re.search(r"Paragraph \d+: [^\n]*", last).group(0)
    if "Score: N" in system:  # the support judge: is the answer in the text?
        text, _, qa = last.partition("\n\nQuestion:")
        answer = qa.partition("Answer:")[2].split("\n\nRate")[0].strip()
        return "Score: 9\nRationale: stated." if answer in text else "Score: 2\nRationale: not stated."
    if "depend on it" in last:
        return "\n".join(DEPENDENTS) if j == 0 else "shop/cart.py\nshop/util.py"
    if "is missing from this repository" in last:
        return f"```python\n{MONEY}```" if j == 0 else "```python\nclass Money:\n    pass\n```"
    if "Write one question that needs the whole document" in last:
        return "Question: How do the records change over the document?\nAnswer: The stations recorded rain"
    if "Write one question" in last:
        part = int(re.search(r"Part (\d+) of", last).group(1))
        if part == 7:
            return "I cannot write a question about this."  # no question: an Unparsed row
        if part % 4 == 0:
            return "Question: What is recorded in this part?"  # no answer: answered by a second call
        sentence = re.search(r"Paragraph \d+: [^\n]*", last).group(0)
        answer = "Nothing at all happened there." if part == 2 else sentence  # part 2: unsupported
        return f"Question: What did the station record in this part?\nAnswer: {answer}"
    if "Summarise the whole document" in last:
        return "Summary: The stations recorded rain and rising water over many months, part after part."
    return "Summary: This part lists the rain recorded at each station and how far the water rose."


def test_the_recipe_end_to_end_with_a_scripted_model(tmp_path, scripted_engine, capsys):
    scripted_engine.reply = scripted
    cfg = LongContextConfig(
        out=str(tmp_path / "r"), chunk_tokens=256, buckets=[1024, 2048], **inputs(tmp_path)
    )
    run = run_recipe("long-context", cfg, scripted_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    for f in funnel.values():  # every rejection carries its reason
        assert f["done"] and sum(f["reasons"].values()) == f["rejected"], f
    assert funnel["documents"]["kept"] == 5  # .md and .txt, not .py
    assert funnel["chunk_documents"]["reasons"] == {"exceeds_context": 1, "too_short": 1}
    assert funnel["write_qa"]["reasons"] == {"no_question": 1}
    assert funnel["qa_judge"]["reasons"].get("below_threshold", 0) >= 1 and funnel["qa_judge"]["kept"] >= 1
    assert funnel["grade_dependents"]["kept"] == 1 and funnel["grade_dependents"]["reasons"] == {
        "dependents_wrong": 1
    }
    assert funnel["check_rewrite"]["kept"] == 1 and funnel["check_rewrite"]["reasons"] == {"import_failed": 1}
    assert (
        funnel["length_buckets"]["reasons"] == {"exceeds_buckets": funnel["length_buckets"]["rejected"]} != {}
    )

    docs = {p.name: p.read_text().strip() for p in Path(cfg.corpus).iterdir()}
    rows = list(run.store.iter_records("length_buckets", kept=True))
    tasks = {r.meta["task"] for r in rows}
    assert tasks == {"qa", "summary", "global_qa", "repo_dependents", "repo_missing_file"}
    for r in rows:
        assert r.provenance.capability == "long_context" and r.scores["length_bucket"] in (1024, 2048)
        if r.meta["task"] in ("qa", "summary", "global_qa"):  # the whole document is the context
            assert docs[r.meta["doc_id"]] in r.messages[0].content
    qa = [r for r in rows if r.meta["task"] == "qa"]
    assert all(r.response.startswith("Paragraph") and r.response in docs[r.meta["doc_id"]] for r in qa)
    picked = [r for r in run.store.iter_records("pick_chunks") if r.doc_id == "b_wind.md"]
    assert len(picked) == 2 and len({c.index for c in picked}) == 2
    unparsed = [r for r in run.store.iter_records("write_qa") if isinstance(r, Unparsed)]
    assert [r.raw for r in unparsed] == ["I cannot write a question about this."]
    answered = [r for r in run.store.iter_records("answer_qa") if r.meta.get("answered_by")]
    assert [r.question for r in answered] == ["What is recorded in this part?"]  # wind's part 4
    assert answered[0].answer in answered[0].context and any(r.id == answered[0].id for r in qa)
    summary = next(r for r in rows if r.meta["task"] == "summary")
    assert (
        summary.response.startswith("The stations recorded") and "preserving" in summary.messages[0].content
    )
    deps = next(r for r in rows if r.meta["task"] == "repo_dependents")
    assert deps.response == "\n".join(DEPENDENTS) and "shop/money.py` was removed" in deps.messages[0].content

    report = run.store.get_meta("length_buckets")
    assert (
        report["buckets"] == ["1K", "2K"]
        and report["context_length"] == 8192
        and report["chunk_tokens"] == 256
    )
    assert (
        sum(report["rows"].values()) == len(rows) and report["rows"]["1K"] >= 3 and report["rows"]["2K"] >= 1
    )
    assert run.store.get_meta("outputs") == {"sft": ["length_buckets"], "preference": [],
                                             "prompts": "length_buckets"}  # fmt: skip
    calls = len(scripted_engine.calls)
    run.close()

    # the same command again: every stage is done, the model is not asked anything
    run_recipe("long-context", cfg, scripted_engine).close()
    assert len(scripted_engine.calls) == calls

    assert main(["stats", cfg.out]) == 0 and "exceeds_context" in capsys.readouterr().out
    assert main(["export", cfg.out, "--to", str(tmp_path / "ds")]) == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    details = json.loads(card.split("## Run details\n\n```json\n", 1)[1].split("```", 1)[0])
    assert details["length_buckets"]["rows"] == report["rows"] and "long-context" in card
    assert "exceeds_buckets" in card  # the funnel, with its reasons
    import pandas as pd

    exported = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "ds" / "sft").glob("*.parquet")))
    assert len(exported) == len(rows)
    assert {json.loads(s)["length_bucket"] for s in exported["scores"]} <= {1024.0, 2048.0}


def test_the_config_is_checked_at_the_boundary(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["run", "long-context", "--out", out, "--tasks", "qa,poems"]) == 2
    assert "tasks: choose from qa, summary, repo" in capsys.readouterr().err
    assert main(["run", "long-context", "--out", out, "--buckets", "2048,x"]) == 2
    assert main(["run", "long-context", "--out", out, "--engine", "openai", "--model", "fake",
                 "--base-url", "http://127.0.0.1:9/v1"]) == 2  # fmt: skip
    assert "give --tokenizer" in capsys.readouterr().err
    cfg = build(LongContextConfig, {"out": out, "buckets": "16384,32768"})
    assert cfg.buckets == [16384, 32768]
    assert not Path(out).exists()


# -- on the embedded model ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_recipe_on_the_embedded_model(tmp_path, hf_engine):
    """The real 135M model: what it writes is weak and little survives; the mechanics hold, and every
    prompt and row is measured with its own tokenizer."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rain.md").write_text(long_text(4))  # ~170 tokens: two chunks of 96
    repo = {p: s for p, s in SHOP.items() if not p.startswith(("other/", "scripts/", "shop/util"))}
    write_repo(tmp_path / "repos" / "shop", repo)
    cfg = LongContextConfig(out=str(tmp_path / "r"), corpus=str(docs), repos=str(tmp_path / "repos"),
                            chunk_tokens=96, qa_per_document=1, k=1, max_tokens=32, code_max_tokens=96,
                            judge_max_tokens=8, qa_threshold=5.0)  # fmt: skip
    run = run_recipe("long-context", cfg, hf_engine)
    funnel = {f["stage"]: f for f in run.store.funnel()}
    print({s: (f["kept"], f["rejected"], f["reasons"]) for s, f in funnel.items()})
    for f in funnel.values():
        assert f["done"] and sum(f["reasons"].values()) == f["rejected"], f
    assert funnel["chunk_documents"]["kept"] == 1 and funnel["chunks"]["kept"] >= 2
    assert (
        funnel["summarise_chunks"]["kept"] + funnel["summarise_chunks"]["rejected"]
        == funnel["chunks"]["kept"]
    )
    assert funnel["find_dependents"]["kept"] + funnel["find_dependents"]["rejected"] == 1
    for r in run.store.iter_records("qa_judge"):
        assert 1 <= r.scores["qa_support"] <= 10 and r.meta["judge_score_method"] == "logprobs"
    for r in run.store.iter_records("grade_dependents"):
        assert "dependents_f1" in r.scores
    for r in run.store.iter_records("length_buckets", kept=True):
        assert r.provenance.model == "SmolLM2-135M-Instruct" and r.meta["length_bucket"] in ("1K", "2K")
    report = run.store.get_meta("length_buckets")
    assert sum(report["rows"].values()) == funnel["length_buckets"]["kept"]
    run.close()

    # its export: the rows it kept (whatever their number) and a data card with the buckets and funnel
    assert main(["export", cfg.out, "--to", str(tmp_path / "ds"), "--test-fraction", "0"]) == 0
    card = (tmp_path / "ds" / "README.md").read_text()
    details = json.loads(card.split("## Run details\n\n```json\n", 1)[1].split("```", 1)[0])
    assert details["length_buckets"]["rows"] == report["rows"] and "long-context" in card
    assert all(reason in card for f in funnel.values() for reason in f["reasons"])  # the funnel's reasons
    import pyarrow.parquet as pq

    exported = sorted((tmp_path / "ds" / "sft").glob("*.parquet"))
    assert sum(pq.read_table(p).num_rows for p in exported) == funnel["length_buckets"]["kept"]


# -- kill -9 and resume -----------------------------------------------------------------------------
def test_killed_runs_resume_to_the_rows_of_an_uninterrupted_run(tmp_path):
    """kill -9 at three points (each in a process that resumed the last), then the same command: exactly
    the rows of a run never stopped, no finished batch twice (the scripted model behind a real HTTP
    server, for the subprocesses; token counts with the embedded model's tokenizer)."""
    import subprocess

    from conftest import ScriptedEngine
    from openai_server import OpenAIServer
    from test_multilingual import committed, events, first_difference, run_and_kill, synth_cmd

    paths = inputs(tmp_path)
    for name in ("b_wind.md", "c_snow.txt", "e_huge.md", "d_note.md"):
        (Path(paths["corpus"]) / name).unlink()
    with OpenAIServer(engine=ScriptedEngine(scripted), delay_s=0.01) as srv:
        options = [
            "--engine", "openai", "--model", "fake", "--base-url", srv.base_url, "--tokenizer", "embedded",
            "--context-length", "8192", "--chunk-tokens", "256", "--batch-size", "1",
            "--corpus", paths["corpus"], "--repos", paths["repos"],
        ]  # fmt: skip
        reference = tmp_path / "reference"
        assert main(["run", "long-context", "--out", str(reference), *options]) == 0  # in this process
        out = tmp_path / "killed"
        args = synth_cmd("run", "long-context", "--out", str(out), *options)
        points = [
            committed("write_qa", 1),  # mid-generation
            committed("check_original", 1),  # in the sandbox checks
            committed("write_missing_file", 1),  # mid-rewrite, in a process that resumed twice
        ]
        for point in points:
            assert run_and_kill(args, out, point), events(out)[-3:]
        subprocess.run(args, check=True, capture_output=True, timeout=300)

    got, want = snapshot(out), snapshot(reference)
    assert first_difference(got["rows"], want["rows"]) is None
    assert got == want and sum(want["meta"]["length_buckets"]["rows"].values()) > 0
    evs = events(out)
    assert sum(e["event"] == "run_done" for e in evs) == 1
    batches = [(e["stage"], e["batch"]) for e in evs if e["event"] == "batch_committed"]
    assert len(batches) == len(set(batches)), "a finished batch was committed twice"


def snapshot(run_dir: Path) -> dict:
    from synth.store import Store

    store = Store(run_dir, read_only=True)
    try:
        rows = store.query("SELECT stage, key, kept, reason, data FROM records ORDER BY stage, seq")
        stages = store.query("SELECT stage, rows_in, done FROM stages ORDER BY position")
        meta = {k: store.get_meta(k) for k in ("outputs", "length_buckets", "data_sources")}
        return {"rows": rows, "stages": stages, "meta": meta}
    finally:
        store.close()


def test_the_shipped_repository_has_one_key_file_and_passes_its_own_check():
    from synth.recipes.long_context import SHIPPED_REPOS

    (repo,) = list(read_repos(SHIPPED_REPOS))
    (task,) = FindKeyFiles()([repo])
    assert task.removed == "ledger/money.py" and len(task.dependents) == 7
    assert "ledger/cli.py" not in task.dependents and "tests/test_journal.py" not in task.dependents
    sb = sandbox()
    (checked,) = CheckRepo(name="check_original", mode="original", sandbox=sb, limits=sb.limits)([task])
    assert checked.kept, checked.meta
    assert textwrap.dedent(task.original).startswith('"""Amounts of money')
