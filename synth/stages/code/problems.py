"""Problem writing: from a code snippet, the model writes a self-contained programming problem.

After Llama 3's code recipe: random snippets from a corpus inspire diverse problems. The rule for a
usable problem: the text after 'Problem:' (or the whole reply), cut back to its last full sentence when
the reply stopped at max_tokens, with at least ``MIN_WORDS`` words (else the reply is kept as an
``Unparsed`` row: 'no_problem', 'too_short'); repeats of one snippet's problems are dropped
('duplicate').
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synth.engines.base import Completion
from synth.records import Provenance, Record
from synth.stages.code.common import CAPABILITY, CodeStage, block, cut_to_sentence
from synth.stages.code.items import Problem, Snippet
from synth.stages.llm import Reject

MAX_SNIPPET_CHARS = 2500
MIN_WORDS = 8
_HEADER = re.compile(r"^\W*problem(?:\s+statement)?\W*?:\W*", re.IGNORECASE | re.MULTILINE)


def read_corpus(corpus: str | Path, limit: int | None = None, round: int = 0) -> Iterator[Snippet]:
    """One snippet per .py file of the corpus (sorted by path; id = the path inside the corpus, with
    dots), read one at a time, stamped with the post-training ``round``. A missing or empty corpus fails
    here, before any file is read."""
    root = Path(corpus)
    if not root.is_dir():
        raise FileNotFoundError(f"code corpus not found: {root}")
    files = sorted(p for p in root.rglob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files in code corpus {root}")
    return (_snippet(root, path, round) for path in files[:limit])


def _snippet(root: Path, path: Path, round: int) -> Snippet:
    rel = path.relative_to(root).as_posix()
    return Snippet(
        id=rel.removesuffix(".py").replace("/", "."),
        path=rel,
        code=path.read_text(encoding="utf-8"),
        provenance=Provenance(capability=CAPABILITY, source=rel, round=round),
    )


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


@dataclass(kw_only=True)
class WriteProblems(CodeStage):
    """Snippets -> ``sampling.n`` problems each (ids ``{snippet}-p{j}``)."""

    name: str = "write_problems"
    template = "code/problem"
    _seen: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, snippets: list[Snippet]) -> list[Record]:
        self._seen = {}  # a snippet's problems all arrive in its batch
        return super().__call__(snippets)

    def variables(self, snip: Snippet) -> dict[str, str]:
        return {"code": block(snip.code, MAX_SNIPPET_CHARS)}

    def output_id(self, snip: Snippet, j: int) -> str:
        return f"{snip.id}-p{j}"

    def parse(self, snip: Snippet, reply: Completion, j: int, messages) -> Problem:
        problem, reason = parse_problem(reply.text, reply.finish_reason)
        if problem is None:
            raise Reject(reason or "no_problem")
        rec = Problem(
            id=self.output_id(snip, j),
            snippet_id=snip.id,
            problem=problem,
            meta={"finish_reason": reply.finish_reason},
        )
        key = " ".join(problem.lower().split())
        seen = self._seen.setdefault(snip.id, set())
        if key in seen:
            rec.reject(self.name, "duplicate")
        seen.add(key)
        return rec
