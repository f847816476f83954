"""The configurations shipped with the package (``metarec/presets/*.toml``) and TOML files read as plain values.

Why a module of its own: the recipe (:mod:`metarec.meta.recipe`), the CLI's ``presets`` command and the
benchmark all start from these files; reading them is not part of choosing a recipe. They are package data,
so they work from a wheel too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from metarec.errors import ConfigError
from metarec.meta.run import RunConfig, tomllib


def recipe_base() -> RunConfig:
    """The recipe's base configuration (package data ``metarec/presets/recipe.toml``)."""
    return preset("recipe")


def recipe_base_dict() -> dict[str, dict[str, Any]]:
    return preset_dict("recipe")


def preset_names() -> list[str]:
    """The presets shipped with the package (``metarec/presets/*.toml``), so they work from a wheel too."""
    return sorted(p.name[:-5] for p in resources.files("metarec.presets").iterdir() if p.name.endswith(".toml"))


def preset_dict(name: str) -> dict[str, dict[str, Any]]:
    """The values of a preset shipped with the package (``metarec/presets/NAME.toml``)."""
    known = preset_names()
    if name not in known:  # also refuses names that are paths ("../x")
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(known)}")
    path = resources.files("metarec.presets").joinpath(f"{name}.toml")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def preset_summary(name: str) -> str:
    """A preset's first sentence of its leading comment (what ``metarec presets`` shows beside its name)."""
    text = resources.files("metarec.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    comment = " ".join(lines)
    end = comment.find(". ")
    return comment if end < 0 else comment[:end + 1]


def preset(name: str) -> RunConfig:
    """A preset shipped with the package as a :class:`RunConfig`."""
    return RunConfig.from_dict(preset_dict(name))


def load_toml_values(path) -> dict[str, dict[str, Any]]:
    """The sections and values a TOML file sets (nothing filled in), with a clear error for a bad file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
