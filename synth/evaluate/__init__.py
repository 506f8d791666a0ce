"""Held-out evaluation of a model, per capability, as Llama 3 evaluates each round's model (section 5).

``suite``: the suite YAML (``EvalSuite``), ``run_suite`` (one engine, every check, ``metrics.json`` and
``EVAL.md``) and ``held_out_prompts`` (every check's prompts, for decontamination). One module per
check: ``math`` and ``factuality`` wrap the existing evaluators; ``code`` (pass@1 in the sandbox),
``tools`` (calls parsed and executed), ``language`` (reply language) and ``long_context`` (QA over a
document) are ``evaluate_X(engine, rows, **options) -> dict`` with the headline metric, ``n`` and each
item's result (``results``). ``synth eval --model M --suite SUITE.yaml`` runs it (``pipelines/eval_cli.py``).
"""
