"""Exceptions raised by metarec. The library raises; only the CLI turns them into one-line messages."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class MetarecError(Exception):
    """Base class of every error metarec raises on purpose."""


class ConfigError(MetarecError, ValueError):
    """A setting is invalid (unknown name, out of range, inconsistent with another)."""


class DataError(MetarecError, ValueError):
    """Input data is malformed. The message names the file, line and field where known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class DataNotFoundError(MetarecError, FileNotFoundError):
    """A dataset's files are not available locally; the message says the three ways to provide them."""


class UnknownIdError(MetarecError, KeyError):
    """An external user or item id is not in the model's vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class MissingExtraError(MetarecError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or fail with one line saying which extra installs it: the core
    install stays small, and a user who asks for plots, loggers or tuning learns the exact pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs the {module!r} package: pip install 'metarec[{extra}]'") from None
