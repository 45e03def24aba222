"""The package layers go one way: no import cycle between `schemas`, `compiler` and the engine's
packages (function-local imports included), and the compiler loads no torch, Ray or vLLM.

The graph is read from the source (every module's AST, every ``import`` statement wherever it
stands), not from what happens to be imported at run time, so a lazy import inside a function counts
as much as one at the top of a module. A node is a folder: ``schemas``, ``compiler``, each folder
directly under ``engine/`` (its subfolders included: ``engine/backends/megatron`` is part of
``engine.backends``) and each module directly under ``engine/`` (``engine.cli``, ``engine.sampling``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("schemas", "compiler", "engine")
HEAVY = ("torch", "ray", "vllm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node_of(module: str) -> str | None:
    """The folder-level package ``module`` belongs to (None: outside the project, or ``engine`` itself)."""
    parts = module.split(".")
    if parts[0] not in TOPS:
        return None
    if parts[0] != "engine":
        return parts[0]
    return None if len(parts) == 1 else f"engine.{parts[1]}"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth of the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from engine import sampling` imports the module engine.sampling
            out += [(node.lineno, target)] + [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def package_graph() -> dict[tuple[str, str], list[str]]:
    """(from node, to node) -> the ``file:line module`` imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for top in TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            src = node_of(_module_name(path))
            for line, target in imported_modules(path):
                dst = node_of(target)
                if src and dst and dst != src:
                    edges[(src, dst)].append(f"{path.relative_to(ROOT)}:{line} {target}")
    return edges


def find_cycle(edges) -> list[str] | None:
    """One cycle of the graph as a node list whose first and last entries are equal, or None."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("a", "c"): []}) is None
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == ["a", "b", "c", "a"]


def test_imports_are_read_at_every_depth(tmp_path):
    """A function-local import and a relative import are edges like a top-level one."""
    mod = ROOT / "engine" / "data" / "prompts.py"  # has a function-local `from engine.core.files import ...`
    targets = {t for _, t in imported_modules(mod)}
    assert "engine.core.files" in targets
    rel = ROOT / "engine" / "reward" / "grader.py"  # `from .config import ...`
    assert "engine.reward.config" in {t for _, t in imported_modules(rel)}


def test_no_cycle_between_packages():
    edges = package_graph()
    cycle = find_cycle(edges)
    if cycle:
        detail = "\n".join(f"  {a} -> {b}: " + "; ".join(edges[(a, b)][:3]) for a, b in zip(cycle, cycle[1:]))
        pytest.fail("package cycle " + " -> ".join(cycle) + "\n" + detail)


def test_core_imports_nothing_else_of_the_engine():
    """`engine.core` is the lowest layer: it may import the standard library, torch and pyarrow only."""
    bad = [where for (a, b), where in package_graph().items() if a == "engine.core"]
    assert not bad, bad


def test_compiler_and_schemas_import_no_engine_module():
    bad = [w for (a, b), where in package_graph().items() if a in ("compiler", "schemas") and b.startswith("engine")
           for w in where]
    assert not bad, bad


@pytest.mark.parametrize("package", ["compiler", "schemas", "compiler.cli", "compiler.diff_cli"])
def test_compiler_loads_no_torch_ray_or_vllm(package):
    """Importing the compiler (and everything it imports) in a fresh interpreter loads no GPU stack."""
    code = (f"import sys, importlib; importlib.import_module({package!r}); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {package} loaded {out.stdout.strip()}"


def test_compiling_a_spec_loads_no_torch_ray_or_vllm(tmp_path):
    """The whole compile path (load, validate with the data column check on a real file, lower) stays
    torch-free; the column check really ran (its problem for the missing answer column is reported)."""
    rows = tmp_path / "train.jsonl"
    rows.write_text('{"question": "1+1?", "solution": "\\\\boxed{2}"}\n')
    code = ("import sys; from compiler import compile_spec, SpecError\n"
            f"try:\n    compile_spec('specs/qwen2.5-7b.yaml', ['data.train={rows}', 'data.prompt_key=question'])\n"
            "except SpecError as e:\n    print('problems:', ' '.join(p.path for p in e.problems))\n"
            f"print('loaded:', ' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "data.answer_key" in out.stdout, out.stdout  # the column check read the file
    assert out.stdout.strip().endswith("loaded:"), f"compiling a spec loaded {out.stdout}"
