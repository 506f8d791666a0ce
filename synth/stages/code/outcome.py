"""After the repair loop: each candidate's outcome, the SFT rows of passing solutions, and
failing-vs-passing preference pairs. Both stages run over each candidate's final state (its last row
across the loop's stages) with ``Run.grouped``: a problem's candidates arrive together.

``Solutions`` turns the passing ones into SFT rows (problem -> the final passing code), the verdict
saying when they passed ('passed_first_try', 'passed_after_repair_N'), and rejects the rest as
'never_passed' (the last failure in ``meta['last_failure']``) or as 'duplicate_solution' (same code as
a kept one of the problem). Every row carries ``meta['outcome']``; ``outcome_counts`` tallies them.
An SFT row's ``meta['repair_round']`` is the repair round its code passed after (0: first try); the
post-training round is ``provenance.round``.

``PreferencePairs``: chosen = a passing solution; rejected = its own first failing version (repaired
candidates) or a never-passing candidate of the same problem. A pair is only made when the rejected code,
run in the sandbox against the chosen solution's passing tests, really fails them: when only the tests
were wrong, the "failing" code was fine and makes no pair ('rejected_passes_tests'); rejected code the
tests cannot even be built against is refused with the harness's reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxes import Job, Result
from synth.records import Message, PreferenceRecord, Record, Response
from synth.stages.code.common import python_job, sft_row
from synth.stages.code.execute import classify
from synth.stages.code.extract import fence
from synth.stages.code.items import Candidate
from synth.stages.code.unittests import build_test_script
from synth.stages.execute import ExecuteStage
from synth.stages.llm import Reject
from synth.stages.select import group_by_prompt
from synth.store import Store


@dataclass
class Solutions:
    """Final candidates (whole problems) -> SFT rows of the passing ones; the others rejected."""

    name: str = "solutions"

    def __call__(self, candidates: list[Candidate]) -> list[Record]:
        out: list[Record] = []
        for group in group_by_prompt(candidates).values():  # type: ignore[arg-type]
            seen: set[str] = set()
            # of two identical passing solutions, the one that passed earliest stays
            for cand in sorted(group, key=lambda c: c.repair_round if c.kept else 0):
                out.append(self.settle(cand, seen))
        return out

    def settle(self, cand: Candidate, seen: set[str]) -> Record:
        outcome = cand.outcome
        if outcome == "never_passed":
            cand.meta.update(outcome=outcome, last_failure=cand.last_failure)
            cand.reject(self.name, outcome)
            return cand
        code = cand.code or ""
        rec = sft_row(
            cand,
            cand.problem,
            fence(code),
            problem_id=cand.problem_id,
            snippet_id=cand.snippet_id,
            sample=cand.sample,
            repair_round=cand.repair_round,
            outcome=outcome,
            code=code,
            tests=cand.tests,
            attempts=[a.model_dump() for a in cand.attempts],
        )
        key = " ".join(code.split())
        if key in seen:
            rec.reject(self.name, "duplicate_solution")
        else:
            seen.add(key)
            rec.keep(self.name, outcome)
        return rec


def outcome_counts(store: Store, stage: str = "solutions") -> dict[str, int]:
    """How many candidates passed first time, after each repair round, or never (with the last
    failure): one query over the ``solutions`` stage."""
    rows = store.query(
        "SELECT json_extract_string(data, '$.meta.outcome') AS o, "
        "json_extract_string(data, '$.meta.last_failure') AS f, count(*) FROM records WHERE stage = ? "
        "GROUP BY o, f",
        [stage],
    )
    counts: dict[str, int] = {}
    for outcome, failure, n in rows:
        key = f"never_passed ({failure})" if outcome == "never_passed" else outcome
        counts[key] = counts.get(key, 0) + n
    return dict(sorted(counts.items()))


@dataclass
class PairProposal:
    """One (chosen, rejected) proposal before the sandbox confirms the rejected code fails."""

    id: str
    chosen: Candidate
    rejected_code: str
    rejected_from: str  # "first_attempt" | "other_sample"
    rejected_id: str


def propose_pairs(candidates: list[Candidate]) -> list[PairProposal]:
    """Per passing solution: its first failing version, else one never-passing sibling with code."""
    out = []
    for group in group_by_prompt(candidates).values():  # type: ignore[arg-type]
        failing = [r for r in group if not r.kept and r.code]
        for good in (r for r in group if r.kept and r.code):
            code = good.code or ""
            first = good.attempts[0].code if good.attempts else None
            if first and first.strip() != code.strip():
                out.append(PairProposal(f"{good.id}-repair-pair", good, first, "first_attempt", good.id))
                continue
            bad = next((b for b in failing if (b.code or "").strip() != code.strip()), None)
            if bad is not None:
                out.append(
                    PairProposal(f"{good.id}-vs-{bad.id}", good, bad.code or "", "other_sample", bad.id)
                )
    return out


@dataclass(kw_only=True)
class PreferencePairs(ExecuteStage):
    """Final candidates (whole problems, ``Run.grouped``) -> confirmed failing-vs-passing pairs."""

    name: str = "preference_pairs"
    strength: str = "better"

    def __call__(self, candidates: list[Candidate]) -> list[Record]:
        return super().__call__(propose_pairs(candidates))

    def job(self, p: PairProposal) -> Job:
        script, reason, _ = build_test_script(p.chosen.tests or "", p.rejected_code)
        if script is None:  # e.g. the old code defines none of the names the tests call
            raise Reject(reason or "tests_syntax_error")
        return python_job(p.rejected_code, script, self.sandbox.limits)

    def verdict(self, p: PairProposal, result: Result) -> str | None:
        fails_with = classify(result)
        if fails_with is None:
            return "rejected_passes_tests"
        return "sandbox_error" if fails_with == "sandbox_error" else None

    def record(
        self, p: PairProposal, result: Result | None, reason: str | None, detail: str = ""
    ) -> PreferenceRecord:
        good = p.chosen
        return PreferenceRecord(
            id=p.id,
            prompt=[Message(role="user", content=good.problem)],
            responses=[
                Response(content=fence(good.code or ""), label="chosen", score=1.0),
                Response(content=fence(p.rejected_code), label="rejected", score=0.0),
            ],
            strength=self.strength,  # type: ignore[arg-type]
            provenance=good.provenance,
            meta={
                "problem_id": good.problem_id,
                "chosen_id": good.id,
                "rejected_id": p.rejected_id,
                "rejected_from": p.rejected_from,
                "rejected_fails_with": classify(result) if result is not None else reason,
                "chosen_outcome": good.outcome,
            },
        )
