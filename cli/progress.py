"""Transfer progress on stderr: MiB done of total, speed, time left, and "resuming" when an
earlier attempt's bytes are picked up (rich, which typer already brings)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
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


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


@contextmanager
def transfer_bar(label: str, total: int, enabled: bool = True) -> Iterator[TransferBar]:
    """A bar on stderr for the duration of a transfer; ``enabled=False`` draws nothing (for
    --json output, or when stderr is not a terminal and nobody would see it move)."""
    with _progress(enabled) as progress:
        yield TransferBar(progress, label, total)


@contextmanager
def work_bar(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A bar for work whose size is learnt as it goes (a backup: the database, then the
    files it names): yields ``update(done, total)``. The bar appears at the first update,
    so a refusal up front prints none."""
    progress = _progress(enabled)
    task: list[TaskID] = []

    def update(done: int, total: int) -> None:
        if not task:
            progress.start()
            task.append(progress.add_task(label, total=total))
        progress.update(task[0], completed=done, total=total)

    try:
        yield update
    finally:
        if task:
            progress.stop()
