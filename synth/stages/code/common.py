"""What the code stages share: provenance, the sandbox settings, chat helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

from sandboxes import Job, Limits, Result, run_many
from sandboxes.api import get_backend
from synth.engines.base import Completion, Engine, Request, SamplingParams
from synth.records import Provenance

CAPABILITY = "code"
TEMPLATE_VERSION = "1"
FEEDBACK_CHARS = 1500  # tail of a traceback / lint report that goes back into a prompt


@dataclass
class Sandbox:
    """Where generated programs run: a sandboxes backend, its limits, how many at once."""

    backend: str = "local"
    unsafe_no_isolation: bool = False
    limits: Limits = field(default_factory=lambda: Limits(timeout_s=10, memory_mb=512))
    max_workers: int | None = None

    def check(self) -> None:
        """Fail now (SandboxUnavailable / ValueError) rather than mark every program 'sandbox_error'."""
        get_backend(self.backend, unsafe_no_isolation=self.unsafe_no_isolation)

    def run(self, jobs: list[Job]) -> list[Result]:
        if not jobs:
            return []
        return run_many(
            jobs,
            backend=self.backend,
            unsafe_no_isolation=self.unsafe_no_isolation,
            max_workers=self.max_workers,
        )


def provenance(engine: Engine, sampling: SamplingParams, template: str, source: str | None, rnd: int = 0):
    return Provenance(
        capability=CAPABILITY,
        model=engine.model,
        engine=engine.name,
        template=template,
        template_version=TEMPLATE_VERSION,
        sampling=sampling.to_dict(),
        seed=sampling.seed,
        round=rnd,
        source=source,
    )


def ask(
    engine: Engine, conversations: list[list[dict[str, str]]], sampling: SamplingParams
) -> list[list[Completion]]:
    """One batched engine call over chat conversations."""
    if not conversations:
        return []
    return engine.generate([Request.chat(c) for c in conversations], sampling)


def tail(text: str, n: int = FEEDBACK_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def cut_to_sentence(text: str) -> str:
    """A reply stopped at max_tokens, cut back to its last complete sentence or paragraph ('' if none)."""
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("?"), text.rfind("\n\n"))
    if text.rstrip().endswith("."):
        cut = len(text.rstrip()) - 1
    return text[: cut + 1].strip() if cut > 0 else ""
