"""Help output without type noise on flags.

typer 0.29's rich help prints a type column for every option, and for a flag (``--json``,
``--yes``, ``--help``) that column says ``<bool>``, which reads as if the flag took a value.
A flag takes none, so its type column is left empty; options with values keep theirs.
The hook is typer's own per-option display method (typer is pinned <0.30 in pyproject).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


def _flag_aware(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


def install() -> None:
    """Idempotent: flags show no value type in `--help`."""
    TyperOption.display_type_rich = _flag_aware  # type: ignore[method-assign]
