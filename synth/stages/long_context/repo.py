"""Python repositories and their import graph, from ``ast`` alone (nothing is imported or run).

Llama 3: "We parse Python files to identify import statements and determine their dependencies. From
here, we select the most commonly depended-upon files, specifically those referenced by at least five
other files." The rule here, exactly:

- A file's module name is its path below its import root, ``/`` as ``.``, without ``.py`` (a package's
  ``__init__.py`` is the package). The root is the repository's top folder, and ``src/`` for a src
  layout (a ``src`` folder without ``__init__.py``).
- Every ``import`` statement of a file counts, wherever it stands (top level, function, ``try``).
  ``import a.b`` names module ``a.b``; ``from a import b`` names ``a.b`` when that is a module of the
  repository, else ``a``; relative imports (``from ..m import x``) are resolved against the file's own
  package first. A name that is not a module of the repository, but starts with one, names the longest
  such module (``import pkg.missing`` -> ``pkg``); anything else (the standard library, third-party
  packages) is not a dependency.
- A file depends on the module each of its imports names, not on the packages above it (importing
  ``pkg.money`` is a dependency on ``pkg/money.py``, not on ``pkg/__init__.py``), and never on itself.
- A key file is a non-test, non-empty file that at least ``min_dependents`` other files depend on.
"""

from __future__ import annotations

import ast
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synth.records import Provenance
from synth.stages.long_context.documents import SKIP_DIRS
from synth.stages.long_context.items import CAPABILITY, Repo


def is_test(path: str) -> bool:
    name = posixpath.basename(path)
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


@dataclass
class RepoIndex:
    """A repository's modules and import graph: ``imports[path]`` = the repository files it imports,
    ``importers[path]`` = the files that import it (its dependents)."""

    files: dict[str, str]
    roots: list[str] = field(default_factory=lambda: ["."])
    module_of: dict[str, str] = field(default_factory=dict)  # path -> module name
    path_of: dict[str, str] = field(default_factory=dict)  # module name -> path
    imports: dict[str, set[str]] = field(default_factory=dict)
    importers: dict[str, set[str]] = field(default_factory=dict)
    unparsed: dict[str, str] = field(default_factory=dict)  # path -> syntax error

    @property
    def tests(self) -> list[str]:
        return sorted(p for p in self.files if is_test(p))

    def dependents(self, path: str) -> list[str]:
        return sorted(self.importers.get(path, ()))

    def key_files(self, min_dependents: int) -> list[tuple[str, list[str]]]:
        """(path, dependents) of every key file, most dependents first, then by path."""
        keys = [
            (p, self.dependents(p))
            for p in self.files
            if not is_test(p) and self.files[p].strip() and len(self.importers.get(p, ())) >= min_dependents
        ]
        return sorted(keys, key=lambda kv: (-len(kv[1]), kv[0]))

    def most_imported(self) -> tuple[str, int] | None:
        counts = sorted((-len(v), p) for p, v in self.importers.items() if v)
        return (counts[0][1], -counts[0][0]) if counts else None


def module_name(path: str, roots: list[str]) -> str | None:
    """``pkg/sub/mod.py`` -> ``pkg.sub.mod``; ``pkg/__init__.py`` -> ``pkg`` (below its root)."""
    rel = path
    for root in roots:
        if root != "." and path.startswith(root + "/"):
            rel = path[len(root) + 1 :]
            break
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or None


def analyse(files: dict[str, str]) -> RepoIndex:
    """The import graph of a repository given as path -> source (see the module's docstring)."""
    paths = sorted(p for p in files if p.endswith(".py"))
    src_layout = any(p.startswith("src/") for p in paths) and "src/__init__.py" not in files
    index = RepoIndex(files={p: files[p] for p in paths}, roots=["src", "."] if src_layout else ["."])
    for p in paths:
        name = module_name(p, index.roots)
        if name:
            index.module_of[p] = name
            index.path_of.setdefault(name, p)
    for p in paths:
        try:
            tree = ast.parse(files[p], filename=p)
        except (SyntaxError, ValueError) as e:
            index.unparsed[p] = f"{type(e).__name__}: {e}"
            continue
        targets = {t for t in _imported(tree, p, index) if t != p}
        index.imports[p] = targets
        for t in targets:
            index.importers.setdefault(t, set()).add(p)
    return index


def _imported(tree: ast.AST, path: str, index: RepoIndex) -> Iterator[str]:
    module = index.module_of.get(path, "")
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found = _resolve(alias.name, index)
                if found:
                    yield found
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                up = node.level - 1
                if up > len(parts):
                    continue  # beyond the top of the repository: Python refuses it too
                base = ".".join([*parts[: len(parts) - up], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            named_base = False
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if alias.name != "*" and sub in index.path_of:
                    yield index.path_of[sub]
                else:
                    named_base = True
            if named_base and base:
                found = _resolve(base, index)
                if found:
                    yield found


def _resolve(name: str, index: RepoIndex) -> str | None:
    """The repository file a dotted module name names: itself, else its longest prefix that is one."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        found = index.path_of.get(".".join(parts[:n]))
        if found:
            return found
    return None


def read_repos(folder: str | Path, round: int = 0) -> Iterator[Repo]:
    """The repositories of ``folder``: the folder itself when it holds .py files at its top level or a
    package (a sub-folder with ``__init__.py``), else each of its sub-folders that holds .py files
    (sorted). A repository is its .py files (hidden, virtual-env and cache folders skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"repository folder not found: {root}")
    single = any(root.glob("*.py")) or any(root.glob("*/__init__.py"))
    repos = [root] if single else sorted(d for d in root.iterdir() if d.is_dir() and not _skipped(d.name))
    found = [r for r in repos if _py_files(r)]
    if not found:
        raise FileNotFoundError(f"no Python repository (no .py files) in {root}")
    return (_repo(r, round) for r in found)


def _skipped(name: str) -> bool:
    return name in SKIP_DIRS or name.startswith(".")


def _py_files(repo: Path) -> list[Path]:
    return sorted(
        p
        for p in repo.rglob("*.py")
        if p.is_file() and not any(_skipped(part) for part in p.relative_to(repo).parts[:-1])
    )


def _repo(repo: Path, round: int) -> Repo:
    files = {
        p.relative_to(repo).as_posix(): p.read_text(encoding="utf-8", errors="replace")
        for p in _py_files(repo)
    }
    return Repo(
        id=repo.name,
        root=repo.name,
        files=files,
        provenance=Provenance(capability=CAPABILITY, source=repo.name, round=round),
    )
