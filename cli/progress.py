"""Transfer progress on stderr: MiB done of total, speed, time left, and "resuming" when an
earlier attempt's bytes are picked up (rich, which typer already brings)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class TransferBar:
    """One file's bar. ``advance`` is the SDK's ``progress`` callback, ``resumed`` its
    ``resumed`` one: the bytes already there count as done, and the label says so."""

    def __init__(self, progress: Progress, label: str, total: int) -> None:
        self._progress = progress
        self._label = label
        self._task = progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def resumed(self, n: int) -> None:
        self._progress.update(self._task, advance=n, description=f"{self._label} (resuming)")


@contextmanager
def transfer_bar(label: str, total: int, enabled: bool = True) -> Iterator[TransferBar]:
    """A bar on stderr for the duration of a transfer; ``enabled=False`` draws nothing (for
    --json output, or when stderr is not a terminal and nobody would see it move)."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
    with progress:
        yield TransferBar(progress, label, total)
