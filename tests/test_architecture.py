"""The house rules of src/metarec, checked on the source: which package may import which (the pipeline
order of docs/architecture.md), no import cycle between files, no private name imported from another
package, and no source file over 400 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "metarec"
BASE = {"errors", "_io", "version", "linalg"}
# package -> the packages (first component under metarec) it may import, besides itself
ALLOWED: dict[str, set[str]] = {
    "errors": set(), "version": set(), "_io": {"errors"}, "linalg": {"errors"},
    "data": BASE,
    "tasks": BASE | {"data"},
    "models": BASE | {"data"},
    "baselines": BASE | {"data", "tasks"},
    "meta": BASE | {"data", "tasks", "models"},
    "onboarding": BASE | {"data", "tasks", "models", "meta", "baselines"},
    "eval": BASE | {"data", "tasks", "models", "meta", "baselines", "onboarding"},
    "serve": BASE | {"data", "tasks", "models", "meta", "baselines", "onboarding"},
    "demo": BASE | {"data", "tasks", "models", "meta", "baselines", "onboarding", "eval", "serve"},
    "cli": BASE | {"data", "tasks", "models", "meta", "baselines", "onboarding", "eval", "serve", "demo"},
    "__main__": {"cli"},
    "": {"errors", "version", "serve"},  # metarec/__init__.py: the public names
    "presets": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every metarec import in one module, lazy ones included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "metarec" or target.startswith("metarec."):
                found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("metarec")]
    return found


def resolve(target: str, names: list[str]) -> list[str]:
    """The metarec modules an import loads: ``from pkg import submodule`` names the submodule."""
    out = []
    for n in names or [None]:
        full = f"{target}.{n}" if n else target
        out.append(full if full in MODULES else target)
    return out


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


EDGES = {m: {t for target, names in imports(m) for t in resolve(target, names) if t != m} for m in MODULES}


def test_packages_import_only_downwards():
    wrong = sorted(f"{m} imports {t}" for m, targets in EDGES.items() for t in targets
                   if package(t) != package(m) and package(t) not in ALLOWED[package(m)])
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_files():
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(EDGES[m]):
            if state[t] == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif state[t] == 0:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if state[m] == 0:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_imported_across_packages():
    wrong = sorted(f"{m} imports {target}.{n}" for m in MODULES for target, names in imports(m) for n in names
                   if n.startswith("_") and not n.startswith("__") and package(target) != package(m))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_source_files_stay_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 400, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"


def test_the_rules_see_every_package():
    assert {package(m) for m in MODULES} <= set(ALLOWED)
    assert EDGES["metarec.meta.learner"] >= {"metarec.meta.maml", "metarec.meta.kernels"}


def test_architecture_page_lists_every_file():
    """docs/architecture.md (written by scripts/architecture_doc.py) names every source file."""
    page = (ROOT.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = {line.split()[0] for line in page.splitlines() if line.strip()}
    missing = sorted(str(p.relative_to(ROOT)) for p in MODULES.values() if p.name != "__init__.py" and p.name not in listed)
    assert not missing, f"run python scripts/architecture_doc.py; missing: {missing}"
