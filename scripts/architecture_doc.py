"""Write docs/architecture.md: the source tree of src/metarec, one sentence per file (the first sentence
of its module docstring), under the package rules that tests/test_architecture.py enforces.

    python scripts/architecture_doc.py          # rewrites docs/architecture.md
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "metarec"
OUT = ROOT / "docs" / "architecture.md"

HEAD = """# Architecture

The package is laid out as the pipeline: **data → tasks → models → meta-learning → evaluation → serving**.
A package imports only from the packages before it (`tests/test_architecture.py` checks this, that no two
files import each other in a circle, that no private name crosses a package, and that no file passes 400
lines):

```
errors, version, _io, linalg      (everyone)
data                              ratings, attributes, loaders
tasks      models                 per-user tasks and splits | the rating models
baselines  meta                   fold-in baselines | MAML's maths, its kernels, training
onboarding                        which items to ask a newcomer (used by eval and serve)
eval       serve                  metrics and the benchmark | the recommender and its service
demo, cli                         the command line (thin: the work is in the library)
```

`meta/maml.py` is the maths of the README's equations; `meta/kernels/` compute the same quantities faster
where they apply, each tested against it; `meta/reference.py` is an independent per-task loop the tests
compare everything with.

This page is written by `python scripts/architecture_doc.py` from each file's docstring; a test fails when a
file is missing from it.

"""


def first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    return sentence.rstrip(":") + ("" if sentence.endswith((".", "!", "?")) else ".")


def tree() -> list[str]:
    lines = ["```"]
    for path in sorted(SRC.rglob("*.py"), key=lambda p: (p.parent.relative_to(SRC).parts, p.name != "__init__.py", p.name)):
        rel = path.relative_to(SRC)
        if path.name == "__init__.py" and not first_sentence(path).strip("."):
            continue
        depth = len(rel.parts) - 1
        name = f"{rel.parent.name}/" if path.name == "__init__.py" else path.name
        indent = "  " * (depth - (1 if path.name == "__init__.py" else 0))
        lines.append(f"{indent}{name:<24} {first_sentence(path)}")
    lines.append("```")
    presets = sorted(p.name for p in (SRC / "presets").glob("*.toml"))
    lines += ["", f"Package data: `presets/` ({', '.join(presets)}): the configurations `--preset` names.", ""]
    return lines


def main() -> int:
    OUT.write_text(HEAD + "\n".join(tree()), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
