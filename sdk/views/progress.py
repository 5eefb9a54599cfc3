"""How long-running work talks to whoever called it: notes, warnings, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[int], None]
"""Called with how many items were done since the last call."""


def some(names: list[str] | tuple[str, ...], shown: int = 6) -> str:
    """``names`` joined for a line a person reads: the first few, then how many more."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


class Reporter(Protocol):
    def note(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def progress(self, description: str, total: int) -> AbstractContextManager[Advance]:
        """A context manager yielding ``advance(n)``."""
        ...


class SilentReporter:
    """For library use: collects warnings, shows nothing."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def note(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n: None
