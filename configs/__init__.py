"""The example node configurations, shipped inside the package (``fedgram init --config NAME``).

Why a package: the wheel carries only packages and their declared data, so the TOML files
live here as package data (pyproject.toml) and are found with :mod:`importlib.resources`,
the same whether Fedgram runs from a checkout or from ``pip install .``.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable


def _root() -> Traversable:
    return resources.files(__name__)


def _walk(folder: Traversable, prefix: str = "") -> list[str]:
    out: list[str] = []
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            out.extend(_walk(entry, f"{prefix}{entry.name}/"))
        elif entry.name.endswith(".toml"):
            out.append(prefix + entry.name.removesuffix(".toml"))
    return out


def names() -> list[str]:
    """The bundled configurations by name: ``community``, ``local-federation/n1``, ..."""
    return sorted(_walk(_root()))


def read(name: str) -> str | None:
    """The TOML text of the bundled configuration NAME (``.toml`` optional), or None."""
    # the name as the older docs spelled it, a path in a checkout: configs/community.toml
    name = name.removesuffix(".toml").removeprefix("./").removeprefix("configs/")
    if name not in names():
        return None
    return _root().joinpath(*f"{name}.toml".split("/")).read_text(encoding="utf-8")
