"""Pulling code out of model replies: fenced blocks first, bare code second.

Models wrap code in ```python fences (sometimes unclosed when a reply stops at max_tokens, sometimes
tagged ``py`` or not at all) or write it bare between sentences. ``extract_code`` takes the first block
tagged with the wanted language, else the first untagged one, else the code-looking tail of a bare reply
(trimmed of trailing prose until it parses); ``None`` means the reply holds no code ("no_code").
"""

from __future__ import annotations

import ast
import re

TAGS = {
    "python": ("python", "python3", "py"),
    "javascript": ("javascript", "js", "node", "nodejs"),
    "php": ("php",),
    "cpp": ("cpp", "c++", "cc", "cxx"),
}
_FENCE = re.compile(
    r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE
)
_CODE_START = {
    "python": re.compile(r"^(?:def |class |import |from \S+ import |@|async def |[A-Za-z_]\w* = )"),
    "javascript": re.compile(r"^(?:function\b|const |let |var |class |module\.exports|'use strict')"),
    "php": re.compile(r"^(?:<\?php|function\b|\$\w+\s*=)"),
    "cpp": re.compile(r"^(?:#include|using |int |template|std::|auto |long |double |bool |string )"),
}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, body) of every fenced block, in order; an unclosed last fence runs to the end."""
    return [(m.group(1).lower(), m.group(2).strip("\n")) for m in _FENCE.finditer(text)]


def extract_code(text: str, language: str = "python") -> str | None:
    tags = TAGS.get(language, (language,))
    blocks = [(t, b) for t, b in fenced_blocks(text) if b.strip()]
    for wanted in (lambda t: t in tags, lambda t: t == ""):
        for tag, body in blocks:
            if wanted(tag):
                return body.strip("\n") + "\n"
    if blocks:  # fenced, but only in other languages
        return None
    return bare_code(text, language)


def bare_code(text: str, language: str = "python") -> str | None:
    """The reply from its first code-looking line; for Python, trailing prose is cut until it parses."""
    lines = text.strip("\n").splitlines()
    start = next((i for i, ln in enumerate(lines) if _CODE_START[language].match(ln)), None)
    if start is None:
        return None
    chunk = lines[start:]
    if language == "python":
        for end in range(len(chunk), 0, -1):
            if _parses("\n".join(chunk[:end])):
                return "\n".join(chunk[:end]).rstrip() + "\n"
    return "\n".join(chunk).rstrip() + "\n"  # unparseable: static analysis will say why


def _parses(src: str) -> bool:
    try:
        ast.parse(src)
    except (SyntaxError, ValueError):
        return False
    return True


def fence(code: str, language: str = "python") -> str:
    return f"```{language}\n{code.strip(chr(10))}\n```"


TESTS_MARKER = "# tests"


def looks_like_tests(code: str) -> bool:
    """A block is a test script when it says so, imports the solution, or is asserts without defs."""
    head = code.lstrip().lower()
    if head.startswith(TESTS_MARKER) or re.search(r"^\s*(from solution import|import solution)", code, re.M):
        return True
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    defines = any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) for n in tree.body)
    asserts = any(isinstance(n, ast.Assert) for n in ast.walk(tree))
    return asserts and not defines


def split_repair(text: str) -> tuple[str | None, str | None]:
    """(code, tests) from a repair reply: python blocks are sorted into tests or solution."""
    blocks = [b for t, b in fenced_blocks(text) if (t in TAGS["python"] or t == "") and b.strip()]
    if not blocks:
        bare = bare_code(text)
        blocks = [bare] if bare else []
    code = tests = None
    for block in blocks:
        block = block.strip("\n") + "\n"
        if looks_like_tests(block):
            tests = tests or block
        else:
            code = code or block
    return code, tests
