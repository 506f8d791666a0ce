"""Problem writing: from a code snippet, the model writes a self-contained programming problem.

After Llama 3's code recipe: random snippets from a corpus inspire diverse problems. The rule for a
usable problem: the text after 'Problem:' (or the whole reply), cut back to its last full sentence when
the reply stopped at max_tokens, with at least ``MIN_WORDS`` words; repeats of one snippet's problems
are dropped ('duplicate').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from synth.engines.base import Engine, SamplingParams
from synth.records import Message, Provenance, SFTRecord
from synth.stages.code.common import CAPABILITY, ask, cut_to_sentence, provenance
from synth.stages.code.extract import fence

TEMPLATE = "code_problem"
MAX_SNIPPET_CHARS = 2500
MIN_WORDS = 8
SYSTEM = "You write short, clear programming exercises."
_HEADER = re.compile(r"^\W*problem(?:\s+statement)?\W*?:\W*", re.IGNORECASE | re.MULTILINE)


def read_corpus(corpus: str | Path, limit: int | None = None) -> list[SFTRecord]:
    """One record per .py file of the corpus (sorted by path); id = the path inside the corpus."""
    root = Path(corpus)
    if not root.is_dir():
        raise FileNotFoundError(f"code corpus not found: {root}")
    files = sorted(p for p in root.rglob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files in code corpus {root}")
    out = []
    for path in files[:limit]:
        rel = path.relative_to(root).as_posix()
        code = path.read_text(encoding="utf-8")
        out.append(
            SFTRecord(
                id=rel.removesuffix(".py").replace("/", "."),
                messages=[Message(role="user", content=code)],
                provenance=Provenance(capability=CAPABILITY, source=rel),
                meta={"path": rel, "code": code},
            )
        )
    return out


def problem_prompt(snippet: str) -> list[dict[str, str]]:
    code = snippet if len(snippet) <= MAX_SNIPPET_CHARS else snippet[:MAX_SNIPPET_CHARS] + "\n# ..."
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"Here is some Python code:\n{fence(code)}\n\n"
            "Write a new, self-contained programming problem inspired by this code. Ask for one Python "
            "function: give its name, its arguments, what it returns, and one example call with the "
            "expected result. Start with 'Problem:'.",
        },
    ]


def parse_problem(text: str, finish_reason: str = "stop") -> tuple[str | None, str | None]:
    """(problem, None) or (None, rejection reason)."""
    body = text.strip()
    m = _HEADER.search(body)
    if m:
        body = body[m.end() :].strip()
    if finish_reason == "length":  # cut back to the last complete sentence or line
        body = cut_to_sentence(body)
    if not body:
        return None, "no_problem"
    if len(re.findall(r"[A-Za-z]{2,}", body)) < MIN_WORDS:
        return None, "too_short"
    return body, None


@dataclass
class WriteProblems:
    engine: Engine
    sampling: SamplingParams  # n = problems per snippet
    stage: str = "write_problems"

    def __call__(self, snippets: list[SFTRecord]) -> list[SFTRecord]:
        replies = ask(self.engine, [problem_prompt(s.meta["code"]) for s in snippets], self.sampling)
        out = []
        for snip, comps in zip(snippets, replies, strict=True):
            seen: set[str] = set()
            for j, comp in enumerate(comps):
                prompt = problem_prompt(snip.meta["code"])[-1]["content"]
                messages = [Message(role="user", content=prompt)]
                if comp.text.strip():
                    messages.append(Message(role="assistant", content=comp.text))
                problem, reason = parse_problem(comp.text, comp.finish_reason)
                rec = SFTRecord(
                    id=f"{snip.id}-p{j}",
                    messages=messages,
                    provenance=provenance(self.engine, self.sampling, TEMPLATE, snip.meta["path"]),
                    meta={"snippet_id": snip.id, "problem": problem, "finish_reason": comp.finish_reason},
                )
                key = " ".join((problem or "").lower().split())
                if reason:
                    rec.reject(self.stage, reason)
                elif key in seen:
                    rec.reject(self.stage, "duplicate")
                else:
                    seen.add(key)
                    rec.keep(self.stage)
                out.append(rec)
        return out
