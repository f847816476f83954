"""The documentation site builds with ``mkdocs build --strict`` (broken links fail it), its home page is
README with links that work on the site, and the API page documents the public classes. Skipped where
the docs extra is not installed (``make docs`` installs it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings_handlers")),
    reason="the docs extra is not installed (pip install 'metarec[docs]' or make docs)")


@pytest.mark.timeout(120)
def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=110, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "The maths" in home and 'href="results/"' in home and 'href="docs/' not in home
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("ColdStartRecommender", "RunConfig", "choose_recipe", "make_logger", "MissingExtraError"):
        assert name in api


def test_readme_links_become_site_links():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from mkdocs_hooks import readme_as_index
    finally:
        sys.path.pop(0)
    text = "[r](docs/results.md#k) ![i](docs/img/a.png) [`maml.py`](src/metarec/meta/maml.py) [w](https://x.org) [a](#b)"
    assert readme_as_index(text) == "[r](results.md#k) ![i](img/a.png) `maml.py` [w](https://x.org) [a](#b)"
