"""Stages of the multilingual recipe (``synth/recipes/multilingual.py``, Llama 3's multilingual SFT
data): translated quantitative reasoning (``reasoning``: problems translated, answered natively,
graded), rejection-sampled native prompts at a temperature drawn per prompt (``native``), and
translation tasks from parallel text kept by round-trip chrF (``parallel``). Translation itself is
``translate``; the typed items are in ``items``; language identification is ``synth.stages.language``;
the prompts are in ``synth/prompts/multilingual/``."""
