"""Exceptions raised by modelrepo.

Every error says what went wrong *and* what to do about it, so a notebook user can fix the
problem without reading a traceback. They all derive from :class:`ModelRepoError`; several
also derive from the built-in exception a Python programmer would reach for first
(``FileNotFoundError``, ``ValueError``...), so ``except FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class ModelRepoError(Exception):
    """Base class of every modelrepo error."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  -> {hint}" if hint else message)


class InputError(ModelRepoError, ValueError):
    """Bad input from the caller (a name, a path, an option): fix the call and retry."""


class LayoutError(ModelRepoError, ValueError):
    """A model folder Triton would refuse (wrong config, missing model file, bad version...)."""

    def __init__(self, problems: list[LayoutProblem]) -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the model layout:"]
        lines += [f"  - {p}" for p in self.problems]
        Exception.__init__(self, "\n".join(lines))
        self.message = lines[0]
        self.hint = None


class LayoutProblem:
    """One reason Triton would refuse a model folder: where, what, and how to fix it."""

    __slots__ = ("fix", "line", "message", "path")

    def __init__(self, path: str, message: str, fix: str, line: int | None = None) -> None:
        self.path = path
        self.message = message
        self.fix = fix
        self.line = line

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message} ({self.fix})"

    def __repr__(self) -> str:
        return f"LayoutProblem({self!s})"


class ClusterError(ModelRepoError):
    """The Kubernetes API refused or failed a request (permissions, missing claim...)."""


class TransferError(ModelRepoError, OSError):
    """Bytes could not be moved or verified between here and the claim."""


class TritonError(ModelRepoError):
    """A Triton server refused a request or could not be reached."""


class VersionExistsError(ModelRepoError, FileExistsError):
    """The requested model version is already published."""


class LocalStackError(ModelRepoError, RuntimeError):
    """A piece of the local test stack (Triton, cluster emulator) is missing or failed."""
