"""Stages of `synth run code` (Llama 3's code recipe): problems from snippets, solutions, static analysis,
unit tests in the sandbox, repair rounds, backtranslated documentation and language translation."""
