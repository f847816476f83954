"""What users install and run outside Python: the extras and their bounds, constraints.txt agreeing with
pyproject.toml, the licence, the Dockerfile's invariants, and the one-line errors of a missing extra."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import MissingExtraError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
EXTRAS = PROJECT["optional-dependencies"]


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
    out = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def requirements(*groups: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for group in groups:
        reqs += [Requirement(r) for r in EXTRAS[group]]
    return [r for r in reqs if r.name != "metarec"]


def test_every_extra_users_expect_exists_and_dev_installs_what_the_tests_use():
    assert {"serve", "plot", "tensorboard", "mlflow", "tune", "docs", "ann", "dev"} <= set(EXTRAS)
    self_ref = [Requirement(r) for r in EXTRAS["dev"] if Requirement(r).name == "metarec"]
    assert self_ref and {"serve", "plot", "tune", "ann"} <= self_ref[0].extras
    assert {r.name for r in requirements("serve")} >= {"fastapi", "uvicorn", "h11"}
    assert "matplotlib" not in {r.name for r in requirements()}  # core stays without plotting


def test_every_dependency_has_an_upper_bound_and_every_pin_fits_its_range():
    every = requirements(*[g for g in EXTRAS if g != "dev"], "dev")
    unbounded = [str(r) for r in every if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert not unbounded, f"no upper bound: {unbounded}"
    pinned = pins()
    wrong = [f"{r.name}=={pinned[r.name]} outside {r.specifier}" for r in every
             if r.name in pinned and pinned[r.name] not in r.specifier]
    assert not wrong, "\n".join(wrong)
    # what make install (and make docs) install is pinned; torch is pinned by the Makefile instead
    tested = {r.name for r in requirements("serve", "plot", "tune", "ann", "dev", "docs", "tensorboard")} - {"torch"}
    tested -= {r.name for r in requirements() if r.marker is not None and not r.marker.evaluate()}
    missing = sorted(n for n in tested if re.sub(r"[-_.]+", "-", n).lower() not in pinned)
    assert not missing, f"not in constraints.txt: {missing}"


def test_the_licence_is_apache_2_in_both_places():
    assert PROJECT["license"] in ({"text": "Apache-2.0"}, "Apache-2.0")
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150  # the full text


def test_the_dockerfile_runs_as_non_root_with_pinned_cpu_torch_and_copies_no_data():
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))  # continuation lines joined
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    last_run = max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    assert max(i for i, line in enumerate(lines) if line.startswith("USER ")) > last_run  # nothing runs as root after
    torch = [line for line in lines if "torch" in line and line.startswith("RUN ")]
    assert torch and all("torch==2.13.0" in line and "--index-url https://download.pytorch.org/whl/cpu" in line
                         for line in torch)
    copied = [word for line in lines if line.startswith(("COPY ", "ADD ")) for word in line.split()[1:-1]]
    assert copied and set(copied) <= {"pyproject.toml", "README.md", "LICENSE", "constraints.txt", "src"}
    assert not any(line.startswith("ADD ") for line in lines)
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in lines)
    assert any(line.startswith("ENTRYPOINT") and all(w in line for w in ('"serve"', '"/model"', '"0.0.0.0"'))
               for line in lines)
    assert any('".[serve,ann]"' in line or "'.[serve,ann]'" in line for line in lines)  # --top-k approximate works
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "**" in ignore  # everything is left out unless named


def test_missing_extras_fail_in_one_line_naming_them(monkeypatch, tmp_path):
    from metarec.demo import plot_demo
    from metarec.eval.benchmark import plot_results

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'metarec\[plot\]'"):
        plot_demo(None, None, tmp_path / "x.png", "tiny")
    with pytest.raises(MissingExtraError, match=r"metarec\[plot\]"):
        plot_results(None, tmp_path)
    result = CliRunner().invoke(app, ["benchmark", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "metarec[plot]" in result.output and not (tmp_path / "b").exists()
    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-model")])
    assert result.exit_code == 1 and "pip install 'metarec[serve]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
