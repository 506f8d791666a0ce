"""Stages of the math recipe (``synth/recipes/math.py``, Llama 3's math and reasoning recipe): problems
(a file, the CHAMP set, or written by the model from a skill taxonomy), chain-of-thought and
code-interleaved solutions, answer grading (``grading``: extraction, normalisation, math-verify
equivalence under timeouts, in a pool of worker processes), step verification by rollouts
(``steps``), preference, error-correction and step-label rows (``outputs``), and evaluation of a
checkpoint (``evaluate``). The typed items they pass along are in ``items``, their prompts in
``synth/prompts/math/``."""
