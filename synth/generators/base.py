"""What every generator's config shares: where the run lives, which engine and model, how to sample."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from synth.engines import Engine, SamplingParams, get_engine
from synth.pipeline import CachedEngine, Run


@dataclass(kw_only=True)
class GenerationConfig:
    out: str  # run directory; the same config resumes a stopped run
    engine: str = "hf"
    model: str | None = None  # path or hub id; None: the embedded SmolLM2-135M-Instruct
    base_url: str | None = None  # for the openai engine
    k: int = 4  # samples per prompt
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 8  # items per committed batch
    round: int = 0
    skip_invalid: bool = False
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. batch_size, dtype for hf

    def open_run(self) -> Run:
        """The run directory; a different config there is refused (resume needs the same one)."""
        return Run(self.out, config={k: v for k, v in asdict(self).items() if k != "engine_kwargs"})

    def sampling(self, **overrides: Any) -> SamplingParams:
        params = dict(
            n=self.k,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )
        return SamplingParams(**{**params, **overrides})

    def cached_engine(self, run: Run, engine: Engine | None = None) -> CachedEngine:
        """The configured engine (or ``engine``, for tests and embedding) behind the run's cache."""
        inner = engine or get_engine(self.engine, self.model, base_url=self.base_url, **self.engine_kwargs)
        return CachedEngine(inner, run.store)
