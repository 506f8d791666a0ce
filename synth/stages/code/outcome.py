"""After the repair loop: each candidate's outcome, the SFT rows of passing solutions, and
failing-vs-passing preference pairs.

``final_states`` takes each candidate's last appearance across the loop's stages. ``solutions`` keeps
the passing ones as SFT rows (problem -> the final passing code), the verdict saying when they passed
('passed_first_try', 'passed_after_repair_N'), and rejects the rest as 'never_passed' (the last failure
is kept in ``meta['last_failure']``) or as 'duplicate_solution' (same code as a kept one of the problem).

``PreferencePairs``: chosen = a passing solution; rejected = its own first failing version (repaired
candidates) or a never-passing candidate of the same problem. A pair is only made when the rejected code
really fails the chosen solution's passing tests, run again in the sandbox: when only the tests were
wrong, the "failing" code was fine and makes no pair ('rejected_passes_tests').
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sandboxes import Job
from synth.records import Message, PreferenceRecord, Record, Response, SFTRecord
from synth.stages.code.common import Sandbox
from synth.stages.code.execute import classify
from synth.stages.code.extract import fence
from synth.stages.code.unittests import build_test_script


def final_states(stages: Sequence[Sequence[Record]]) -> list[SFTRecord]:
    """The last record of each candidate id over the loop's stages, in first-seen order."""
    last: dict[str, SFTRecord] = {}
    for records in stages:
        for r in records:
            last[r.id] = r  # type: ignore[assignment]
    return list(last.values())


def outcome_of(rec: SFTRecord) -> str:
    if not rec.kept:
        return "never_passed"
    rnd = rec.meta.get("round", 0)
    return "passed_first_try" if rnd == 0 else f"passed_after_repair_{rnd}"


def solutions(candidates: list[SFTRecord], stage: str = "solutions") -> list[SFTRecord]:
    out = []
    seen: set[tuple[str, str]] = set()
    # of two identical passing solutions, the one that passed earliest stays
    for cand in sorted(candidates, key=lambda c: c.meta.get("round", 0) if c.kept else 0):
        rec = cand.model_copy(deep=True)
        outcome = outcome_of(rec)
        rec.meta["outcome"] = outcome
        if outcome == "never_passed":
            last = (rec.meta.get("attempts") or [{}])[-1]
            no_change = any(v.reason == "no_change" for v in rec.verdicts)
            rec.meta["last_failure"] = "no_change" if no_change else last.get("reason")
            rec.reject(stage, outcome)
            out.append(rec)
            continue
        code = rec.meta["code"]
        rec.messages = [
            Message(role="user", content=rec.meta["problem"]),
            Message(role="assistant", content=fence(code)),
        ]
        key = (rec.meta["problem_id"], " ".join(code.split()))
        if key in seen:
            rec.reject(stage, "duplicate_solution")
        else:
            seen.add(key)
            rec.keep(stage, outcome)
        out.append(rec)
    return out


@dataclass
class PairCandidate:
    """One (chosen, rejected) proposal before the sandbox confirms the rejected code fails."""

    id: str
    chosen: SFTRecord
    rejected_code: str
    rejected_from: str  # "first_attempt" | "other_sample"
    rejected_id: str


def propose_pairs(final: list[SFTRecord]) -> list[PairCandidate]:
    """Per passing solution: its first failing version, else one never-passing sibling with code."""
    by_problem: dict[str, list[SFTRecord]] = defaultdict(list)
    for r in final:
        by_problem[r.meta["problem_id"]].append(r)
    out = []
    for group in by_problem.values():
        failing = [r for r in group if not r.kept and r.meta.get("code")]
        for good in (r for r in group if r.kept):
            code = good.meta["code"]
            first = (good.meta.get("attempts") or [{}])[0].get("code")
            if first and first.strip() != code.strip():
                out.append(PairCandidate(f"{good.id}-repair-pair", good, first, "first_attempt", good.id))
                continue
            for bad in failing:
                if bad.meta["code"].strip() != code.strip():
                    out.append(
                        PairCandidate(
                            f"{good.id}-vs-{bad.id}", good, bad.meta["code"], "other_sample", bad.id
                        )
                    )
                    break
    return out


@dataclass
class PreferencePairs:
    sandbox: Sandbox
    stage: str = "preference_pairs"
    strength: str = "better"

    def __call__(self, proposals: list[PairCandidate]) -> list[PreferenceRecord]:
        jobs, runnable = [], []
        verdict: dict[str, str | None] = {}
        for p in proposals:
            script, reason, _ = build_test_script(p.chosen.meta["tests"], p.rejected_code)
            if script is None:  # e.g. the old code defines none of the names the tests call
                verdict[p.id] = reason
                continue
            files = {"solution.py": p.rejected_code, "test_solution.py": script}
            jobs.append(
                Job(files=files, language="python", entry="test_solution.py", limits=self.sandbox.limits)
            )
            runnable.append(p)
        for p, res in zip(runnable, self.sandbox.run(jobs), strict=True):
            verdict[p.id] = classify(res)
        out = []
        for p in proposals:
            fails_with = verdict[p.id]
            good = p.chosen
            rec = PreferenceRecord(
                id=p.id,
                prompt=[Message(role="user", content=good.meta["problem"])],
                responses=[
                    Response(content=fence(good.meta["code"]), label="chosen", score=1.0),
                    Response(content=fence(p.rejected_code), label="rejected", score=0.0),
                ],
                strength=self.strength,  # type: ignore[arg-type]
                provenance=good.provenance,
                meta={
                    "problem_id": good.meta["problem_id"],
                    "chosen_id": good.id,
                    "rejected_id": p.rejected_id,
                    "rejected_from": p.rejected_from,
                    "rejected_fails_with": fails_with,
                    "chosen_outcome": good.meta.get("outcome"),
                },
            )
            if fails_with is None or fails_with == "sandbox_error":
                rec.reject(self.stage, "rejected_passes_tests" if fails_with is None else "sandbox_error")
            else:
                rec.keep(self.stage, p.rejected_from)
            out.append(rec)
        return out
