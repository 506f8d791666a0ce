"""Backtranslation (Llama 3 code documentation): the model documents a code file, a second call writes
code back from the documentation alone, and an LLM judge scores how faithfully that code reproduces the
original (1-10). High scorers keep (code -> documentation) as an SFT row.

Rules: a documentation reply is cut back to its last full sentence when it hit max_tokens; it is rejected
when empty ('no_doc') or when it leaks the code (a code block, or half the code's lines verbatim:
'doc_leaks_code'), since then writing code back from it proves nothing. The regenerated code must exist
('no_code'); the judge keeps scores >= the threshold ('below_threshold', 'judge_unparseable'). Like
``synth.stages.judge``, the judge is few-shot and, where the engine reads token probabilities, scores by
the expectation over 1-10 after 'Score:'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from synth.engines.base import Engine, Request, SamplingParams
from synth.records import Message, SFTRecord
from synth.stages.code.common import ask, cut_to_sentence, provenance
from synth.stages.code.extract import extract_code, fence, fenced_blocks
from synth.stages.judge import judge

TEMPLATE = "code_backtranslate"
MAX_CODE_CHARS = 3000


def document_request(code: str) -> str:
    return f"Document this code:\n{fence(_cap(code))}"


def document_prompt(code: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"{document_request(code)}\n\nExplain in plain English what it does, and for each "
            "function its purpose, arguments and return value. Do not repeat the code.",
        }
    ]


def leaks_code(doc: str, code: str) -> bool:
    if fenced_blocks(doc):
        return True
    lines = {ln.strip() for ln in code.splitlines() if len(ln.strip()) > 12}
    return bool(lines) and sum(ln in doc for ln in lines) >= max(2, len(lines) // 2)


def source_record(rid: str, code: str, source: str) -> SFTRecord:
    """What backtranslation starts from: a corpus file or a passing solution."""
    return SFTRecord(
        id=rid, messages=[Message(role="user", content=code)], meta={"code": code, "source": source}
    )


@dataclass
class Document:
    engine: Engine
    sampling: SamplingParams
    stage: str = "bt_document"

    def __call__(self, sources: list[SFTRecord]) -> list[SFTRecord]:
        sampling = replace(self.sampling, n=1)
        replies = ask(self.engine, [document_prompt(s.meta["code"]) for s in sources], sampling)
        out = []
        for src, comps in zip(sources, replies, strict=True):
            comp = comps[0]
            doc = comp.text.strip()
            if comp.finish_reason == "length":
                doc = cut_to_sentence(doc)
            messages = [Message(role="user", content=document_request(src.meta["code"]))]
            if doc:
                messages.append(Message(role="assistant", content=doc))
            rec = SFTRecord(
                id=src.id,
                messages=messages,
                provenance=provenance(self.engine, sampling, TEMPLATE, src.meta["source"]),
                meta={"code": src.meta["code"], "source": src.meta["source"], "doc": doc},
            )
            if not doc:
                rec.reject(self.stage, "no_doc")
            elif leaks_code(doc, src.meta["code"]):
                rec.reject(self.stage, "doc_leaks_code")
            else:
                rec.keep(self.stage)
            out.append(rec)
        return out


def regenerate_prompt(doc: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"Write Python code that does exactly what this documentation describes:\n\n{doc}\n\n"
            "Reply with one ```python block.",
        }
    ]


@dataclass
class Regenerate:
    engine: Engine
    sampling: SamplingParams
    stage: str = "bt_regenerate"

    def __call__(self, documented: list[SFTRecord]) -> list[SFTRecord]:
        sampling = replace(self.sampling, n=1)
        replies = ask(self.engine, [regenerate_prompt(r.meta["doc"]) for r in documented], sampling)
        for rec, comps in zip(documented, replies, strict=True):
            code = extract_code(comps[0].text)
            rec.meta["regenerated"] = code
            if code:
                rec.keep(self.stage)
            else:
                rec.reject(self.stage, "no_code")
        return documented


JUDGE_SYSTEM = (
    "You compare two Python programs. You rate from 1 to 10 how faithfully the second program reproduces "
    "the behaviour of the first, and reply exactly in the form 'Score: N' followed by 'Rationale: <one "
    "sentence>'."
)
_SHOTS = (
    (
        "def area(w, h):\n    return w * h\n",
        "def area(width, height):\n    result = width * height\n    return result\n",
        "Score: 10\nRationale: Same function, same result for every input.",
    ),
    (
        "def evens(xs):\n    return [x for x in xs if x % 2 == 0]\n",
        "def evens(s):\n    return s[::-1]\n",
        "Score: 1\nRationale: It reverses its input instead of keeping the even numbers.",
    ),
)


def judge_messages(original: str, regenerated: str) -> list[dict[str, str]]:
    def turn(a: str, b: str) -> str:
        return f"Original:\n{fence(_cap(a))}\n\nRewritten:\n{fence(_cap(b))}\n\nRate the rewritten program."

    msgs = [{"role": "system", "content": JUDGE_SYSTEM}]
    for a, b, verdict in _SHOTS:
        msgs += [{"role": "user", "content": turn(a, b)}, {"role": "assistant", "content": verdict}]
    msgs.append({"role": "user", "content": turn(original, regenerated)})
    return msgs


@dataclass
class FaithfulnessJudge:
    engine: Engine
    threshold: float = 7.0
    max_tokens: int = 48
    name: str = "faithfulness"
    stage: str = "bt_judge"

    def __call__(self, records: list[SFTRecord]) -> list[SFTRecord]:
        requests = [Request.chat(judge_messages(r.meta["code"], r.meta["regenerated"])) for r in records]
        for rec, j in zip(records, judge(self.engine, requests, self.max_tokens), strict=True):
            rec.meta["judge_reply"] = j.reply
            if j.score is None:
                rec.reject(self.stage, "judge_unparseable")
                continue
            rec.scores[self.name] = j.score
            if j.score >= self.threshold:
                rec.keep(self.stage)
            else:
                rec.reject(self.stage, "below_threshold")
        return records


def _cap(code: str) -> str:
    return code if len(code) <= MAX_CODE_CHARS else code[:MAX_CODE_CHARS] + "\n# ..."
