"""What the code stages share: the LLM stage base of the recipe, how code sits in a prompt, the
Python test job, and the SFT row a branch ends with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandboxes import Job, Limits, new_sentinel
from synth.prompts import load_prompt
from synth.records import Item, Message, SFTRecord
from synth.stages.llm import LLMStage

CAPABILITY = "code"
FEEDBACK_CHARS = 1500  # tail of a traceback / lint report that goes back into a prompt
EXITED_EARLY = "exited_early"  # exit status 0 without the harness's sentinel (``Job.sentinel``)


@dataclass(kw_only=True)
class CodeStage(LLMStage):
    """An LLM stage of the code recipe: capability 'code', prompt file ``template``
    (``synth/prompts/code/<name>.yaml``) unless one is given."""

    capability: str = CAPABILITY
    template = ""  # class attribute, not a field: each stage names its prompt file

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt(self.template)


def block(code: str, limit: int | None = None) -> str:
    """Code as it stands inside a prompt's ```python fence: capped at ``limit`` characters (marked
    with ``# ...``) and without leading or trailing blank lines."""
    if limit is not None and len(code) > limit:
        code = code[:limit] + "\n# ..."
    return code.strip("\n")


def python_job(
    code: str,
    script: str,
    limits: Limits,
    entry: str = "test_solution.py",
    files: dict[str, str] | None = None,
    prove: bool = True,
) -> Job:
    """``solution.py`` next to the test script ``test_solution.py`` (and any other ``files``). With
    ``prove`` the harness gets a fresh sentinel on stdin (``build_test_script``): the run passes only
    when every check ran, not when something exited 0 before."""
    files = {"solution.py": code, "test_solution.py": script, **(files or {})}
    if not prove:
        return Job(files=files, language="python", entry=entry, limits=limits)
    token = new_sentinel()
    return Job(files=files, language="python", entry=entry, limits=limits, stdin=token + "\n", sentinel=token)


def sft_row(item: Item, user: str, assistant: str, **meta: Any) -> SFTRecord:
    """The exported row a branch's item becomes: one user turn and the answer, with the item's id,
    provenance, scores and verdicts."""
    return SFTRecord(
        id=item.id,
        messages=[Message(role="user", content=user), Message(role="assistant", content=assistant)],
        provenance=item.provenance,
        scores=dict(item.scores),
        verdicts=list(item.verdicts),
        meta=meta,
    )


def tail(text: str, n: int = FEEDBACK_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def cut_to_sentence(text: str) -> str:
    """A reply stopped at max_tokens, cut back to its last complete sentence or paragraph ('' if none)."""
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("?"), text.rfind("\n\n"))
    if text.rstrip().endswith("."):
        cut = len(text.rstrip()) - 1
    return text[: cut + 1].strip() if cut > 0 else ""
