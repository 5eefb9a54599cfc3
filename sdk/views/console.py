"""Terminal output: rich progress and messages on stderr, and quieting native log noise."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def ui_stream() -> IO[str]:
    """A handle on the real stderr that survives ``quiet_native_output`` redirecting fd 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.stderr  # an in-memory stream (tests): nothing native writes to it
    return os.fdopen(os.dup(fd), "w", buffering=1)


def route_warnings(stream: IO[str]) -> None:
    """Send edgekit's log warnings (provider fallbacks, unsigned bundles) to ``stream`` as
    one plain line each, so they stay visible while native output is quieted."""
    logger = logging.getLogger("edgekit")
    for handler in [h for h in logger.handlers if getattr(h, "edgekit_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.edgekit_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


class RichReporter:
    """Reporter for the CLI: progress bars and messages on stderr, results stay on stdout."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/]", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow bold]warning:[/] {message}", highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        started = time.perf_counter()
        if not self.console.is_terminal:  # logs and pipes get the closing line only
            yield lambda n: None
        else:
            columns = [SpinnerColumn(), TextColumn("{task.description}")]
            if total:
                columns += [BarColumn(), MofNCompleteColumn()]
            with Progress(*columns, TimeElapsedColumn(), console=self.console, transient=True) as bar:
                task = bar.add_task(description, total=total or None)
                yield lambda n: bar.advance(task, n)
        elapsed = time.perf_counter() - started
        self.console.print(f"[green]✓[/] {description} [dim]({elapsed:.1f}s)[/]", highlight=False)


@contextlib.contextmanager
def quiet_native_output(enabled: bool = True) -> Iterator[None]:
    """Send what TensorFlow and its C++ core print to fds 1 and 2 (and sys.std*) nowhere.

    TensorFlow's converter logs through absl straight to the file descriptors, which no
    Python logging setting reaches. ``--debug`` turns this off.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            text_sink = io.StringIO()
            with contextlib.redirect_stdout(text_sink), contextlib.redirect_stderr(text_sink):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
