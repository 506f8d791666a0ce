"""Stages of the long-context recipe (``synth/recipes/long_context.py``, Llama 3 section 4.3.4): token
counts and length buckets (``tokens``), documents cut into token chunks (``documents``), question
answering over a chunk (``qa``), hierarchical summaries (``summary``), and code-repository reasoning
(``repo`` analyses the imports with ``ast``, ``repo_tasks`` asks and checks); the typed items they pass
along are in ``items``, their prompts in ``synth/prompts/long_context/``."""
