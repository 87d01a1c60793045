"""QuantFarm's error tree.

Every error a user can cause derives from :class:`FarmError`; the CLI turns it into one red line and
exit status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class FarmError(Exception):
    """Base of every error QuantFarm raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (a dotted path, may be empty) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(FarmError):
    """Bad input. Collects every problem found so that the user sees them all at once."""

    def __init__(self, problems: str | Problem | Iterable[Problem], *, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return head + str(self.problems[0])
        lines = [f"{head}{len(self.problems)} problems:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    def prefixed(self, prefix: str) -> ConfigError:
        """The same problems with ``prefix`` put in front of each path."""
        joined = [Problem(_join(prefix, p.path), p.message) for p in self.problems]
        return ConfigError(joined, source=self.source)


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


class NotFound(FarmError):
    """A sweep, job, model or file that does not exist."""


class QuantizationError(FarmError):
    """A method could not be applied to a model (untraceable model, unsupported layer, NaN outputs...)."""


class ArtifactError(FarmError):
    """An artifact could not be written, read or verified."""


class TransientError(FarmError):
    """A failure that may pass: a database or object store that is unreachable. Retried with backoff."""


class StoreUnavailable(TransientError):
    """The results database cannot be reached."""


class SchemaOutOfDate(FarmError):
    """The results database's schema is behind the code."""


class Cancelled(FarmError):
    """The job was cancelled while it ran."""
