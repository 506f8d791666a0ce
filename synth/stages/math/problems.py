"""Problems: read from a JSONL of problems with gold answers, taken from the CHAMP set, or written by
the model from seed problems and a taxonomy of skills.

- ``read_problems``: one ``{"id", "problem", "answer"}`` row per line (``id`` optional: the hash of
  the problem; ``answer`` a string or a number). A malformed row stops the run with
  ``FILE:LINE: field '...'``, or with ``--skip-invalid`` goes to the run's quarantine; a repeated id
  is an error naming both lines; an answer that normalises to nothing ("", "$", "dollars") is refused.
- ``champ_problems``: the 270 competition problems of the ``champ-dataset`` wheel (CHAMP, MIT), those
  whose answer the grader can compare (a number, an expression, yes/no; not prose such as "the
  sequence does not exist"): 202 of them.
- ``WriteProblems``: Llama 3's "addressing the lack of prompts": each seed problem is paired with a
  skill of the taxonomy (a hash of its id picks it) and the model writes ``n`` new problems that
  practise it. The rule for a usable problem: the text after 'Problem:' (or the whole reply), up to
  any 'Solution' / 'Answer' the model went on to write, with at least ``MIN_WORDS`` words and a
  question or an instruction ('no_problem', 'too_short'); repeats of the seed or of another problem of
  the same seed are dropped ('copy_of_seed', 'duplicate'). Its gold answer is settled by majority vote
  (``synth.stages.math.grade.Vote``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr, field_validator

from synth.engines.base import Completion
from synth.io import BadRow, iter_records
from synth.prompts import load_prompt
from synth.records import Provenance, Record, stable_id
from synth.stages.llm import LLMStage, Reject
from synth.stages.math.grading import normalize
from synth.stages.math.items import CAPABILITY, MathProblem

CHAMP = "champ"  # the `problems` value that selects the CHAMP set
MIN_WORDS = 6
_HEADER = re.compile(r"^\W*problem\s*\d*\W*?:\W*", re.IGNORECASE | re.MULTILINE)
_TAIL = re.compile(r"\n\s*(?:\**\s*)?(?:solution|answer|step\s*1|hint)\b.*", re.IGNORECASE | re.DOTALL)
_WORDY = re.compile(r"[A-Za-z]{2,}")
_CHAMP_WORDS = re.compile(r"[A-Za-z]{3,}")
_MATH_WORDS = {"sqrt", "mod", "sum", "frac", "cdot", "binom", "log", "sin", "cos", "tan", "pi", "infty"}


class _ProblemRow(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr | StrictInt | None = None
    problem: StrictStr
    answer: StrictStr | StrictInt | StrictFloat
    solution: StrictStr | None = None  # a reference solution, kept in meta
    source: StrictStr | None = None

    @field_validator("problem")
    @classmethod
    def _problem(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("problem is blank")
        return v.strip()

    @field_validator("answer")
    @classmethod
    def _answer(cls, v: str | int | float) -> str:
        text = str(v).strip()
        if not normalize(text):
            raise ValueError(f"answer {str(v)!r} states no value the grader can compare")
        return text


def problem_from_row(data: Any, source: str) -> MathProblem:
    """One problem file row -> a ``MathProblem`` (raises ValidationError / TypeError)."""
    if not isinstance(data, dict):
        raise TypeError(f"row must be a JSON object, got {type(data).__name__}")
    row = _ProblemRow.model_validate(data)
    pid = str(row.id) if row.id is not None else stable_id(row.problem)
    meta = {"reference_solution": row.solution} if row.solution else {}
    return MathProblem(
        id=pid,
        problem=row.problem,
        answer=str(row.answer),
        source=row.source or source,
        provenance=Provenance(capability=CAPABILITY, source=source),
        meta=meta,
    )


def read_problems(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    on_bad: Callable[[BadRow], None] | None = None,
    limit: int | None = None,
) -> Iterator[MathProblem]:
    """Problems of a JSONL file, or of the CHAMP set when ``path`` is ``champ``; streamed, validated
    at the boundary, ids unique; the first ``limit`` only when given."""
    if str(path) == CHAMP:
        rows: Iterator[MathProblem] = champ_problems()
    else:
        name = Path(path).name
        rows = iter_records(
            path,
            lambda d: problem_from_row(d, name),
            skip_invalid=skip_invalid,
            on_bad=on_bad,
            unique_ids=True,
        )
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row


def champ_gradable(answer: str) -> bool:
    """A CHAMP answer the grader can compare: a value or expression, or yes/no; not prose."""
    text = normalize(answer)
    if not text:
        return False
    if text.lower() in ("yes", "no"):
        return True
    return not [w for w in _CHAMP_WORDS.findall(text) if w.lower() not in _MATH_WORDS]


def champ_problems() -> Iterator[MathProblem]:
    """The CHAMP problems (``pip install champ-dataset``) whose answers are gradable, in the set's
    order, with the reference step-by-step solution in ``meta``."""
    try:
        files = resources.files("champ_dataset")
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "problems 'champ' needs the champ-dataset package: pip install champ-dataset"
        ) from None
    data = json.loads((files / "dataset_files" / "v0.json").read_text(encoding="utf-8"))
    for pid, p in data["problems"].items():
        answer = p.get("_answer") or ""
        if not champ_gradable(answer):
            continue
        steps = [s.get("_text", "") for s in (p.get("solution") or {}).get("steps", [])]
        yield MathProblem(
            id=pid,
            problem=p["_text"].strip(),
            answer=answer.strip(),
            source=CHAMP,
            provenance=Provenance(capability=CAPABILITY, source="champ-dataset (MIT)"),
            meta={"category": p.get("category"), "reference_solution": "\n".join(s for s in steps if s)},
        )


def load_skills(path: str | Path) -> list[str]:
    """The taxonomy's skills, "area: skill", in file order (a YAML mapping of area -> list of skills)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"skill taxonomy not found: {p}")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{p}: a skill taxonomy is a mapping of area -> list of skills")
    skills = [f"{area}: {skill}" for area, items in data.items() for skill in items if str(skill).strip()]
    if not skills:
        raise ValueError(f"{p}: the skill taxonomy lists no skill")
    return skills


def skill_for(problem_id: str, skills: list[str]) -> str:
    """The skill a seed problem is paired with: stable across runs and machines."""
    return skills[int(stable_id("skill", problem_id), 16) % len(skills)]


def parse_problem(text: str) -> tuple[str | None, str | None]:
    """(problem, None) or (None, rejection reason)."""
    body = text.strip()
    m = _HEADER.search(body)
    if m:
        body = body[m.end() :]
    body = _TAIL.sub("", body).strip().strip("*").strip()
    if not body:
        return None, "no_problem"
    if len(_WORDY.findall(body)) < MIN_WORDS or not re.search(
        r"[?]|\b(find|what|how|compute|calculate)\b", body, re.I
    ):
        return None, "too_short"
    return body, None


@dataclass(kw_only=True)
class WriteProblems(LLMStage):
    """Seed problems -> ``sampling.n`` synthetic problems each (ids ``{seed}-syn{j}``), gold answer
    unset."""

    name: str = "write_problems"
    capability: str = CAPABILITY
    skills: list[str] = field(default_factory=list)
    _seen: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prompt is None:
            self.prompt = load_prompt("math/problem")
        if not self.skills:
            raise ValueError("WriteProblems needs a skill taxonomy")

    def __call__(self, seeds: list[MathProblem]) -> list[Record]:
        self._seen = {s.id: {_key(s.problem)} for s in seeds}  # a seed's problems arrive in its batch
        return super().__call__(seeds)

    def variables(self, seed: MathProblem) -> dict[str, str]:
        return {"skill": skill_for(seed.id, self.skills).split(": ", 1)[-1], "seed": seed.problem}

    def output_id(self, seed: MathProblem, j: int) -> str:
        return f"{seed.id}-syn{j}"

    def parse(self, seed: MathProblem, reply: Completion, j: int, messages: Any) -> MathProblem:
        problem, reason = parse_problem(reply.text)
        if problem is None:
            raise Reject(reason or "no_problem")
        rec = MathProblem(
            id=self.output_id(seed, j),
            problem=problem,
            answer=None,
            source="synthetic",
            skill=skill_for(seed.id, self.skills),
            seed_id=seed.id,
            meta={"finish_reason": reply.finish_reason},
        )
        key, seen = _key(problem), self._seen.setdefault(seed.id, set())
        if key == _key(seed.problem):
            rec.reject(self.name, "copy_of_seed")
        elif key in seen:
            rec.reject(self.name, "duplicate")
        seen.add(key)
        return rec


def _key(text: str) -> str:
    return " ".join(text.lower().split())
