"""Shared CLI plumbing: the --data/--json options, error reporting, running trio.

Commands do not catch errors themselves: whatever expected failure escapes a command (the
node's refusal, a bad URL, a damaged profile or data folder, a file that cannot be written)
reaches :func:`report_errors`, which prints it as one line, ``error: ...``, and exits with
the code the README documents. Anything else is a bug and keeps its traceback. When the
command line has ``--json`` the same error is one JSON object on stdout instead,
``{"error": CODE, "message": ...}``, so a script reads one format whatever happens.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import trio
import typer

# typer (pinned <0.30 in pyproject) vendors click here; the standalone `click` package is
# not a dependency
from typer._click.exceptions import ClickException

T = TypeVar("T")

# exit codes (README: CLI reference)
REFUSED = 1  # the node refused, the connection failed, a transfer failed
LOCAL = 2  # bad configuration, arguments, files, data folder or profile
NO_NODE = 3  # `status`: no node running

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


_json_errors = False


def json_errors_from(argv: list[str]) -> None:
    """Errors are JSON when the command line asks for JSON output. Decided from argv before
    parsing, so that a usage error of a ``--json`` command is JSON too."""
    global _json_errors
    args = argv[: argv.index("--")] if "--" in argv else argv
    _json_errors = "--json" in args


class Failure(Exception):
    """An expected failure a command reports itself: a message, a stable code, an exit code."""

    def __init__(self, message: str, exit_code: int, error: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.error = error


def fail(message: str, code: int = REFUSED, error: str | None = None) -> NoReturn:
    """Stop the command with one line (or, with --json, one JSON object) and an exit code.
    ``error`` is the stable code (node/protocol/errors.py); by default the local one that
    matches the exit code."""
    from node.protocol.errors import ErrorCode

    default = {LOCAL: ErrorCode.LOCAL_ERROR, NO_NODE: ErrorCode.NO_NODE_RUNNING}
    raise Failure(message, code, error or str(default.get(code, ErrorCode.LOCAL_ERROR)))


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def _leaf(exc: BaseException) -> BaseException:
    """The one error to report from what trio raised: a group of parallel failures (parts
    of an upload, say) is reported by its first expected member."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if explain(leaf) is not None or isinstance(leaf, (typer.Exit, KeyboardInterrupt)):
            return leaf
    return leaves[0] if len(leaves) == 1 else exc


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """trio.run, raising the meaningful error out of exception groups."""
    try:
        return trio.run(fn)
    except BaseException as e:
        leaf = _leaf(e)
        if leaf is not e:
            raise leaf from None
        raise


_OS_HINTS = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied: check the owner and mode of the folder",
    errno.EPERM: "not permitted: check the owner and mode of the folder",
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EDQUOT: "disk quota exceeded: free some space",
    errno.EROFS: "read-only file system: choose another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}

_CORRUPT = ("file is not a database", "malformed", "disk image")


def explain(exc: BaseException) -> tuple[str, int] | None:
    """One line for an expected error and its exit code; None for anything else."""
    said = describe(exc)
    return None if said is None else (said[0], said[1])


def describe(exc: BaseException) -> tuple[str, int, str] | None:
    """One line, exit code and stable error code for an expected error; None otherwise."""
    # imported here, when there is an error to explain, not by every command at start-up
    import sqlite3

    from node.backup import BackupError
    from node.client.errors import ChecksumError, ClientError, FileError, ProfileError, UrlInvalid
    from node.config import ConfigError
    from node.protocol.errors import ErrorCode, RpcError
    from node.storage.database import StorageError

    if isinstance(exc, Failure):
        return str(exc), exc.exit_code, exc.error
    if isinstance(exc, ClickException):
        return exc.format_message(), exc.exit_code, ErrorCode.USAGE
    if isinstance(exc, RpcError):
        return str(exc), REFUSED, exc.code
    if isinstance(exc, ChecksumError):
        return str(exc), REFUSED, ErrorCode.CHECKSUM_MISMATCH
    if isinstance(exc, ClientError):
        local = {UrlInvalid: ErrorCode.URL_INVALID, ProfileError: ErrorCode.PROFILE_INVALID}
        local[FileError] = ErrorCode.FILE_ERROR
        code = next((c for t, c in local.items() if isinstance(exc, t)), ErrorCode.LOCAL_ERROR)
        return str(exc), LOCAL, code
    if isinstance(exc, BackupError):
        return str(exc), LOCAL, ErrorCode.BACKUP_INVALID
    if isinstance(exc, ConfigError):
        return str(exc), LOCAL, ErrorCode.CONFIG_INVALID
    if isinstance(exc, StorageError | sqlite3.Error):
        text = str(exc) if isinstance(exc, StorageError) else f"database error: {exc}"
        if any(word in text for word in _CORRUPT):
            text += "; it is damaged or not a Fedgram database: restore it from a backup"
        return text, LOCAL, ErrorCode.DATABASE_ERROR
    if isinstance(exc, OSError):
        what = _OS_HINTS.get(exc.errno or 0) or exc.strerror or str(exc)
        where = exc.filename if exc.filename is not None else ""
        return (f"{where}: {what}" if where else what), LOCAL, ErrorCode.FILE_ERROR
    return None


@contextmanager
def report_errors() -> Iterator[None]:
    """Turn the expected errors of any command into one line on stderr and an exit code."""
    try:
        yield
    except BrokenPipeError:
        # the reader went away (`fedgram ... | head`): nothing left to say to anyone, and
        # Python's final flush of stdout must not complain either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(REFUSED) from None
    except BaseException as e:
        leaf = _leaf(e)
        said = describe(leaf)
        if said is None:
            raise
        message, code, error = said
        if _json_errors:
            sys.stdout.write(json.dumps({"error": str(error), "message": message}) + "\n")
        elif isinstance(leaf, ClickException):
            from typer import rich_utils

            rich_utils.rich_format_error(leaf)  # typer's usage box, as without --json
        else:
            sys.stderr.write(f"error: {message}\n")
        raise SystemExit(code) from None


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
