"""Programming-language translation: a passing Python solution -> JavaScript / PHP, kept only when the
translation reproduces the Python solution's behaviour in the sandbox.

Language-neutral tests: ``IOCases`` runs the passing solution's own tests once more in the sandbox with
every public top-level function wrapped by a recorder, which writes down each outermost call whose
arguments and result are plain JSON (numbers, strings, booleans, null, lists, string-keyed objects):
``{"fn", "args", "result"}``. A translated program is run with a small harness in its language that reads
those cases from stdin, calls each function (by its Python name, or the camelCase form) and compares the
result (numbers to 1e-9 relative). The rule: pass every case, or be rejected with 'load_error' (syntax or
top-level error), 'missing_function', 'wrong_output', 'compile_error', 'timeout', ... C++ is not offered:
its static types need a per-signature harness.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from sandboxes import Job, Result
from synth.engines.base import Engine, SamplingParams
from synth.records import Message, SFTRecord
from synth.stages.code.common import Sandbox, ask, provenance, tail
from synth.stages.code.extract import extract_code, fence
from synth.stages.code.unittests import build_test_script

TEMPLATE = "code_translate"
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
  const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
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
}})();
"""

_PHP_HARNESS = f"""<?php
require __DIR__ . "/solution.php";
$cases = json_decode(stream_get_contents(STDIN), true);
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
foreach ($cases as $c) {{
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
exit($bad ? {WRONG_EXIT} : 0);
"""


@dataclass
class IOCases:
    """Record language-neutral input/output cases of each passing solution (reject 'no_io_cases')."""

    sandbox: Sandbox
    stage: str = "io_cases"

    def __call__(self, solutions: list[SFTRecord]) -> list[SFTRecord]:
        jobs = []
        for sol in solutions:
            script, _, _ = build_test_script(sol.meta["tests"], sol.meta["code"])
            files = {
                "solution.py": sol.meta["code"],
                "test_solution.py": script or "",
                "record.py": _RECORDER,
            }
            jobs.append(Job(files=files, language="python", entry="record.py", limits=self.sandbox.limits))
        out = []
        for sol, res in zip(solutions, self.sandbox.run(jobs), strict=True):
            rec = sol.model_copy(deep=True)
            cases = _parse_cases(res)
            rec.meta["io_cases"] = cases
            if cases:
                rec.keep(self.stage)
            else:
                rec.reject(self.stage, "no_io_cases")
            out.append(rec)
        return out


def _parse_cases(res: Result) -> list[dict]:
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(CASES_MARKER):
            return json.loads(line[len(CASES_MARKER) :])
    return []


def function_names(cases: list[dict]) -> list[str]:
    return sorted({c["fn"] for c in cases})


def translate_prompt(code: str, language: str, names: list[str]) -> list[dict[str, str]]:
    label = LANGUAGES[language]
    return [
        {
            "role": "user",
            "content": f"Translate this Python code to {label}:\n{fence(code)}\n\nKeep the function names "
            f"({', '.join(names)}) and their arguments. Write only the functions, no example program. "
            f"Reply with one ```{language} block.",
        }
    ]


@dataclass
class Translate:
    engine: Engine
    sampling: SamplingParams
    language: str
    stage: str

    def __call__(self, solutions: list[SFTRecord]) -> list[SFTRecord]:
        sampling = replace(self.sampling, n=1)
        prompts = [
            translate_prompt(s.meta["code"], self.language, function_names(s.meta["io_cases"]))
            for s in solutions
        ]
        replies = ask(self.engine, prompts, sampling)
        out = []
        for sol, prompt, comps in zip(solutions, prompts, replies, strict=True):
            text = comps[0].text
            code = extract_code(text, self.language)
            messages = [Message(role="user", content=prompt[-1]["content"])]
            if code:
                messages.append(Message(role="assistant", content=fence(code, self.language)))
            rec = SFTRecord(
                id=f"{sol.id}-{self.language}",
                messages=messages,
                provenance=provenance(self.engine, sampling, f"{TEMPLATE}_{self.language}", sol.id),
                meta={
                    "solution_id": sol.id,
                    "problem_id": sol.meta["problem_id"],
                    "language": self.language,
                    "code": code,
                    "reply": text,
                    "io_cases": sol.meta["io_cases"],
                },
            )
            if code:
                rec.keep(self.stage)
            else:
                rec.reject(self.stage, "no_code")
            out.append(rec)
        return out


def translation_job(code: str, language: str, cases: list[dict], sandbox: Sandbox) -> Job:
    stdin = json.dumps(cases)
    if language == "javascript":
        return Job(files={"main.js": code + "\n" + _JS_HARNESS}, language="javascript", entry="main.js",
                   stdin=stdin, limits=sandbox.limits)  # fmt: skip
    if language == "php":
        src = code if code.lstrip().startswith("<?php") else "<?php\n" + code
        return Job(files={"solution.php": src, "main.php": _PHP_HARNESS}, language="php", entry="main.php",
                   stdin=stdin, limits=sandbox.limits)  # fmt: skip
    raise ValueError(f"no translation harness for {language!r}; choose from {', '.join(LANGUAGES)}")


def classify_translation(res: Result) -> str | None:
    if res.passed:
        return None
    if res.status != "failed":
        return {"error": "sandbox_error"}.get(res.status, res.status)
    return {MISSING_EXIT: "missing_function", WRONG_EXIT: "wrong_output"}.get(res.exit_code, "load_error")


@dataclass
class RunTranslation:
    """Run each translation against its solution's I/O cases; keep the ones that reproduce them all."""

    sandbox: Sandbox
    stage: str

    def __call__(self, translations: list[SFTRecord]) -> list[SFTRecord]:
        jobs = [
            translation_job(t.meta["code"], t.meta["language"], t.meta["io_cases"], self.sandbox)
            for t in translations
        ]
        for rec, res in zip(translations, self.sandbox.run(jobs), strict=True):
            reason = classify_translation(res)
            rec.meta["run"] = {
                "status": res.status,
                "exit_code": res.exit_code,
                "stderr": tail(res.stderr, 600),
            }
            if reason:
                rec.reject(self.stage, reason)
            else:
                rec.keep(self.stage)
        return translations
