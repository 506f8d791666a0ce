"""Stages of the factuality recipe (``synth/recipes/factuality.py``, Llama 3's knowledge probing):
snippets from a corpus (``corpus``), questions written about them and checked against them
(``questions``), the policy's K answers and the decision per question (``probe``), refusals and the
rows they make (``refusals``), refusal detection (``refusal``), and the held-out evaluation of a model
(``evaluate``, ``synth eval factuality``). The typed items are in ``items``, the prompts in
``synth/prompts/factuality/``."""
