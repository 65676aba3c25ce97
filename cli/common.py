"""Shared CLI plumbing: the --data/--json options, error reporting, running trio."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import trio
import typer

from node.config import ConfigError
from node.protocol.errors import RpcError

T = TypeVar("T")

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        envvar="FEDGRAM_DATA",
        show_envvar=True,
        help="Node data folder (default: the platform's user data dir).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """trio.run with our errors turned into one line on stderr and an exit code."""
    try:
        return trio.run(fn)
    except BaseException as e:
        leaf = _leaf(e)
        if isinstance(leaf, ConfigError):
            fail(str(leaf), 2)
        if isinstance(leaf, RpcError):
            fail(str(leaf), 1)
        if leaf is not e:
            raise leaf from None
        raise


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
