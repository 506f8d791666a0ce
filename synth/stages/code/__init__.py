"""Stages of the code recipe (``synth/recipes/code.py``, Llama 3's code recipe): problems from snippets,
solutions, static analysis, unit tests in the sandbox, repair rounds, backtranslated documentation and
language translation; the typed items they pass along are in ``items``, their prompts in
``synth/prompts/code/``."""
