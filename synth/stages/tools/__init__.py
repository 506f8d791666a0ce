"""The tools recipe's parts (``synth.recipes.tools``), one concern per module:

- ``items``: the typed working items (a tool, a request, a trace with its calls);
- ``schema``: Python functions -> OpenAI function schemas; arguments checked against them;
- ``calls``: reading a model's turn: a tool call (the fallback format of ``synth.chat``) or an answer;
- ``calculator``: the SymPy calculator, in a worker process with a timeout;
- ``search``: BM25 search over a local corpus;
- ``registry``: the run's tools and the checking and execution of calls (sandbox for code and user
  functions, with a trace's earlier calls replayed for stateful tools);
- ``stages``: the stages the recipe composes (requests, ReAct turns, execution, checks, rows, pairs).
"""
