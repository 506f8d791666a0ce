"""Programming-language translation: a passing Python solution -> JavaScript / PHP, kept only when the
translation reproduces the Python solution's behaviour in the sandbox.

Language-neutral tests: ``IOCases`` runs the passing solution's own tests once more in the sandbox with
every public top-level function wrapped by a recorder, which writes down each outermost call whose
arguments and result are plain JSON (numbers, strings, booleans, null, lists, string-keyed objects):
``{"fn", "args", "result"}``. A translated program is run with a small harness in its language that reads
those cases from stdin, calls each function (by its Python name, or the camelCase form) and compares the
result (numbers to 1e-9 relative), then prints the run's sentinel (``Job.sentinel``, read from stdin's
first line) as proof it got through every case. The rule: pass every case, or be rejected with 'load_error'
(syntax or top-level error), 'missing_function', 'wrong_output', 'exited_early' (exit status 0 without the
sentinel: ``process.exit`` / PHP ``exit`` before the harness finished), 'compile_error', 'timeout', ...
C++ is not offered: its static types need a per-signature harness.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sandboxes import Job, Limits, Result, new_sentinel
from synth.engines.base import Completion
from synth.records import Provenance, SFTRecord
from synth.stages.code.common import (
    CAPABILITY,
    EXITED_EARLY,
    CodeStage,
    block,
    python_job,
    sft_row,
    tail,
)
from synth.stages.code.extract import extract_code, fence
from synth.stages.code.items import IOCase, Translation
from synth.stages.code.unittests import build_test_script
from synth.stages.execute import ExecuteStage
from synth.stages.llm import Reject

LANGUAGES = {"javascript": "JavaScript", "php": "PHP"}
MAX_CASES = 30
CASES_MARKER = "__SYNTH_IO_CASES__"
MISSING_EXIT, WRONG_EXIT = 3, 4

_RECORDER = f"""\
import inspect, json, sys
import solution

CASES, DEPTH = [], [0]

def plain(v):
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return v == v and v not in (float("inf"), float("-inf"))
    if isinstance(v, (list, tuple)):
        return all(plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain(x) for k, x in v.items())
    return False

def wrap(name, fn):
    sig = inspect.signature(fn)
    def recorder(*args, **kwargs):
        outer = DEPTH[0] == 0
        snap = None
        if outer and len(CASES) < {MAX_CASES}:
            try:
                bound = sig.bind(*args, **kwargs)
                if not bound.kwargs and plain(list(bound.args)):
                    snap = json.dumps(list(bound.args))
            except TypeError:
                pass
        DEPTH[0] += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            DEPTH[0] -= 1
        if snap is not None and plain(result):
            CASES.append({{"fn": name, "args": json.loads(snap), "result": result}})
        return result
    return recorder

for name, obj in list(vars(solution).items()):
    if inspect.isfunction(obj) and obj.__module__ == "solution" and not name.startswith("_"):
        setattr(solution, name, wrap(name, obj))

import runpy
try:
    runpy.run_path("test_solution.py", run_name="__main__")
except SystemExit:
    pass
unique = list({{json.dumps(c, sort_keys=True): c for c in CASES}}.values())
print("{CASES_MARKER}" + json.dumps(unique))
"""

_JS_HARNESS = f"""
;(function () {{
  const __synthFs = require("fs");
  const __synthInput = __synthFs.readFileSync(0, "utf8");
  const __synthToken = __synthInput.slice(0, __synthInput.indexOf("\\n"));
  const cases = JSON.parse(__synthInput.slice(__synthInput.indexOf("\\n") + 1));
  const camel = (s) => s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
  const lookup = (name) => {{
    for (const n of [name, camel(name)]) {{
      try {{ const f = eval(n); if (typeof f === "function") return f; }} catch (e) {{}}
      if (typeof module.exports[n] === "function") return module.exports[n];
    }}
    return null;
  }};
  const eq = (a, b) => {{
    if (typeof a === "number" && typeof b === "number")
      return a === b || Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
    if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => eq(x, b[i]));
    if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)) {{
      const ka = Object.keys(a).sort(), kb = Object.keys(b).sort();
      return eq(ka, kb) && ka.every((k) => eq(a[k], b[k]));
    }}
    return a === b;
  }};
  let bad = 0;
  for (const c of cases) {{
    const f = lookup(c.fn);
    if (!f) {{ console.error("missing function " + c.fn); process.exit({MISSING_EXIT}); }}
    let got;
    try {{ got = f(...c.args); }} catch (e) {{ got = "error: " + e; }}
    if (!eq(got === undefined ? null : got, c.result)) {{
      bad++;
      console.error(c.fn + "(" + JSON.stringify(c.args).slice(1, -1) + ") returned " + JSON.stringify(got)
        + ", expected " + JSON.stringify(c.result));
    }}
  }}
  if (bad) process.exit({WRONG_EXIT});
  __synthFs.writeSync(1, __synthToken + "\\n");
}})();
"""

_PHP_HARNESS = f"""<?php
$__synth_token = trim((string) fgets(STDIN));
$__synth_cases = json_decode(stream_get_contents(STDIN), true);
require __DIR__ . "/solution.php";
function __synth_eq($a, $b) {{
    if ((is_int($a) || is_float($a)) && (is_int($b) || is_float($b)))
        return $a == $b || abs($a - $b) <= 1e-9 * max(1, abs($a), abs($b));
    if (is_array($a) && is_array($b)) {{
        if (count($a) !== count($b)) return false;
        if (array_is_list($a) !== array_is_list($b) && count($a) > 0) return false;
        foreach ($a as $k => $v) {{
            if (!array_key_exists($k, $b) || !__synth_eq($v, $b[$k])) return false;
        }}
        return true;
    }}
    return $a === $b;
}}
$bad = 0;
foreach ($__synth_cases as $c) {{
    $name = $c["fn"];
    $camel = lcfirst(str_replace(" ", "", ucwords(str_replace("_", " ", $name))));
    $f = function_exists($name) ? $name : (function_exists($camel) ? $camel : null);
    if ($f === null) {{ fwrite(STDERR, "missing function $name\\n"); exit({MISSING_EXIT}); }}
    try {{ $got = call_user_func_array($f, $c["args"]); }}
    catch (Throwable $e) {{ $got = "error: " . $e->getMessage(); }}
    if (!__synth_eq($got, $c["result"])) {{
        $bad++;
        fwrite(STDERR, "$name(" . substr(json_encode($c["args"]), 1, -1) . ") returned " . json_encode($got)
            . ", expected " . json_encode($c["result"]) . "\\n");
    }}
}}
if ($bad) exit({WRONG_EXIT});
fwrite(STDOUT, $__synth_token . "\\n");
exit(0);
"""


def read_cases(res: Result) -> list[IOCase]:
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(CASES_MARKER):
            return [IOCase.model_validate(c) for c in json.loads(line[len(CASES_MARKER) :])]
    return []


def function_names(cases: list[IOCase]) -> list[str]:
    return sorted({c.fn for c in cases})


def translation_job(code: str, language: str, cases: list[IOCase], limits: Limits) -> Job:
    """The translated program with its language's harness; stdin is a fresh sentinel line, then the
    cases as JSON. The harness prints the sentinel after the last case: a program that exits 0 before
    (``process.exit``, PHP ``exit``) is 'exited_early'."""
    token = new_sentinel()
    stdin = token + "\n" + json.dumps([c.model_dump() for c in cases])
    if language == "javascript":
        return Job(files={"main.js": code + "\n" + _JS_HARNESS}, language="javascript", entry="main.js",
                   stdin=stdin, limits=limits, sentinel=token)  # fmt: skip
    if language == "php":
        src = code if code.lstrip().startswith("<?php") else "<?php\n" + code
        return Job(files={"solution.php": src, "main.php": _PHP_HARNESS}, language="php", entry="main.php",
                   stdin=stdin, limits=limits, sentinel=token)  # fmt: skip
    raise ValueError(f"no translation harness for {language!r}; choose from {', '.join(LANGUAGES)}")


def classify_translation(res: Result) -> str | None:
    if res.passed:
        return None
    if res.status != "failed":
        return {"error": "sandbox_error", "incomplete": EXITED_EARLY}.get(res.status, res.status)
    return {MISSING_EXIT: "missing_function", WRONG_EXIT: "wrong_output"}.get(res.exit_code, "load_error")


@dataclass(kw_only=True)
class IOCases(ExecuteStage):
    """Passing solutions (SFT rows of ``solutions``) -> a ``Translation`` holding their recorded I/O
    cases (rejected 'no_io_cases' when no call was plain enough to record)."""

    name: str = "io_cases"

    def job(self, sol: SFTRecord) -> Job:
        code = sol.meta["code"]
        script, _, _ = build_test_script(sol.meta["tests"], code)
        files = {"record.py": _RECORDER}  # the solution passed already: no proof needed here
        limits = self.sandbox.limits
        return python_job(code, script or "", limits, entry="record.py", files=files, prove=False)

    def verdict(self, sol: SFTRecord, result: Result) -> str | None:
        return None if read_cases(result) else "no_io_cases"

    def record(
        self, sol: SFTRecord, result: Result | None, reason: str | None, detail: str = ""
    ) -> Translation:
        return Translation(
            id=sol.id,
            solution_id=sol.id,
            problem_id=sol.meta["problem_id"],
            python=sol.meta["code"],
            cases=read_cases(result) if result is not None else [],
            provenance=Provenance(
                capability=CAPABILITY,
                source=sol.id,
                round=sol.provenance.round if sol.provenance else 0,
            ),
        )


@dataclass(kw_only=True)
class Translate(CodeStage):
    """Solutions with I/O cases -> their translation to ``language`` (stage ``translate_{language}``);
    a reply without code in that language is kept as 'no_code'."""

    language: str
    name: str = ""
    template = "code/translate"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = self.name or f"translate_{self.language}"

    def variables(self, t: Translation) -> dict[str, str]:
        label, names = LANGUAGES[self.language], ", ".join(function_names(t.cases))
        return {"label": label, "language": self.language, "code": block(t.python), "names": names}

    def output_id(self, t: Translation, j: int) -> str:
        return f"{t.id}-{self.language}"

    def parse(self, t: Translation, reply: Completion, j: int, messages) -> Translation:
        code = extract_code(reply.text, self.language)
        if not code:
            raise Reject("no_code")
        rec = t.model_copy(deep=True)
        rec.id, rec.language, rec.code, rec.reply = self.output_id(t, j), self.language, code, reply.text
        rec.request = messages[-1]["content"]
        rec.provenance = self.provenance(t)
        return rec


@dataclass(kw_only=True)
class RunTranslation(ExecuteStage):
    """Run each translation against its solution's I/O cases (stage ``run_{language}``); the ones that
    reproduce them all become SFT rows (the translation prompt -> the fenced translated code)."""

    language: str
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"run_{self.language}"

    def job(self, t: Translation) -> Job:
        return translation_job(t.code or "", self.language, t.cases, self.sandbox.limits)

    def verdict(self, t: Translation, result: Result) -> str | None:
        return classify_translation(result)

    def record(
        self, t: Translation, result: Result | None, reason: str | None, detail: str = ""
    ) -> SFTRecord:
        run = None
        if result is not None:
            run = {"status": result.status, "exit_code": result.exit_code, "stderr": tail(result.stderr, 600)}
        meta = {
            "solution_id": t.solution_id,
            "problem_id": t.problem_id,
            "language": self.language,
            "run": run,
        }
        return sft_row(t, t.request or "", fence(t.code or "", self.language), **meta)
