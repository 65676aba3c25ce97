"""A small declarative type system for RPC parameters, results and updates.

The API (node/protocol/api.py) is written with these types once; the gateway validates
every request against it and docs/api.md is rendered from it, so the two cannot drift
(the role Telegram's TL schema plays).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ErrorCode, RpcError

# What storage accepts: SQLite INTEGER is a signed 64-bit int; a bigger Python int raises
# OverflowError in sqlite3 (and used to come back as INTERNAL).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The default range of an Int: ids, seqs, pts, counts, sizes and offsets are never negative
# and never near 2^63, and 2^53-1 keeps the arithmetic handlers do on them (seq + 1,
# offset + limit, index * part_size) inside int64, and exact in JSON/JavaScript clients.
SAFE_MAX = 2**53 - 1


class Type:
    """Base of all schema types. ``check`` raises :class:`SchemaViolation` on a mismatch."""

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class SchemaViolation(ValueError):
    pass


def _bad(path: str, msg: str) -> SchemaViolation:
    return SchemaViolation(f"{path}: {msg}")


@dataclass(frozen=True)
class Str(Type):
    min_len: int = 0
    max_len: int = 4096
    pattern: str | None = None

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise _bad(path, "must be a string")
        if not self.min_len <= len(value) <= self.max_len:
            raise _bad(path, f"length must be {self.min_len}..{self.max_len}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _bad(path, f"must match {self.pattern}")

    def describe(self) -> str:
        pat = f", /{self.pattern}/" if self.pattern else ""
        return f"string[{self.min_len}..{self.max_len}{pat}]"


@dataclass(frozen=True)
class Int(Type):
    """An integer storage accepts. By default 0..2^53-1 (see SAFE_MAX); a wider or negative
    range is declared explicitly (:data:`INT64` for opaque 64-bit values such as random_id),
    and no declaration may leave int64: every parameter of every method is bounded here."""

    min: int = 0
    max: int = SAFE_MAX

    def __post_init__(self) -> None:
        if not INT64_MIN <= self.min <= self.max <= INT64_MAX:
            raise ValueError(f"Int({self.min}, {self.max}): bounds must lie within int64")

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(path, "must be an integer")
        if not self.min <= value <= self.max:
            raise _bad(path, f"must be in {_bound(self.min)}..{_bound(self.max)}")

    def describe(self) -> str:
        if (self.min, self.max) == (INT64_MIN, INT64_MAX):
            return "int64"
        return f"int[{_bound(self.min)}..{_bound(self.max)}]"


def _bound(n: int) -> str:
    names = {SAFE_MAX: "2^53-1", INT64_MAX: "2^63-1", INT64_MIN: "-2^63"}
    return names.get(n, str(n))


# signed 64-bit, as SQLite stores it: for client-chosen opaque ids (random_id, ping_id)
INT64 = Int(INT64_MIN, INT64_MAX)


@dataclass(frozen=True)
class Float(Type):
    min: float = float("-inf")
    max: float = float("inf")

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(path, "must be a number")
        if not self.min <= value <= self.max:  # also rejects NaN
            raise _bad(path, f"must be in {self.min}..{self.max}")

    def describe(self) -> str:
        return "float"


@dataclass(frozen=True)
class Bool(Type):
    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            raise _bad(path, "must be a boolean")

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True)
class Bytes(Type):
    min_len: int = 0
    max_len: int = 65536

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bytes):
            raise _bad(path, "must be a byte string")
        if not self.min_len <= len(value) <= self.max_len:
            raise _bad(path, f"length must be {self.min_len}..{self.max_len}")

    def describe(self) -> str:
        if self.min_len == self.max_len:
            return f"bytes[{self.max_len}]"
        return f"bytes[{self.min_len}..{self.max_len}]"


@dataclass(frozen=True)
class Enum(Type):
    values: tuple[str, ...]

    def check(self, value: Any, path: str) -> None:
        if value not in self.values:
            raise _bad(path, f"must be one of {', '.join(self.values)}")

    def describe(self) -> str:
        return " | ".join(f'"{v}"' for v in self.values)


@dataclass(frozen=True)
class Nullable(Type):
    inner: Type

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.inner.check(value, path)

    def describe(self) -> str:
        return f"{self.inner.describe()} | null"


@dataclass(frozen=True)
class List(Type):
    item: Type
    max_items: int = 100

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _bad(path, "must be a list")
        if len(value) > self.max_items:
            raise _bad(path, f"at most {self.max_items} items")
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")

    def describe(self) -> str:
        return f"list[{self.item.describe()}; ≤{self.max_items}]"


@dataclass(frozen=True)
class DictOf(Type):
    """A map with free keys (e.g. chat id -> seq)."""

    key: Str
    value: Type
    max_items: int = 1000

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _bad(path, "must be a map")
        if len(value) > self.max_items:
            raise _bad(path, f"at most {self.max_items} entries")
        for k, v in value.items():
            self.key.check(k, f"{path} key")
            self.value.check(v, f"{path}[{k!r}]")

    def describe(self) -> str:
        return f"map[{self.key.describe()} -> {self.value.describe()}]"


@dataclass(frozen=True)
class Field:
    type: Type
    doc: str = ""
    required: bool = True


@dataclass(frozen=True)
class Struct(Type):
    """A map with named fields; unknown keys are refused (a typo must not pass silently)."""

    fields: Mapping[str, Field]
    name: str = ""

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _bad(path, "must be a map")
        for k in value:
            if k not in self.fields:
                raise _bad(f"{path}.{k}" if path else str(k), "unknown field")
        for k, f in self.fields.items():
            sub = f"{path}.{k}" if path else k
            if k not in value:
                if f.required:
                    raise _bad(sub, "missing")
                continue
            f.type.check(value[k], sub)

    def describe(self) -> str:
        return self.name or "map"


@dataclass(frozen=True)
class AnyValue(Type):
    """Only for results documented elsewhere (never for request parameters)."""

    doc: str = "any"

    def check(self, value: Any, path: str) -> None:
        return None

    def describe(self) -> str:
        return self.doc


Access = Literal["public", "user", "admin", "node"]


@dataclass(frozen=True)
class Method:
    name: str
    doc: str
    params: Mapping[str, Field]
    result: Type
    errors: tuple[ErrorCode, ...] = ()
    access: Access = "user"
    rate_group: str = "default"
    # who serves it: "node" (always), or a part the node may run ("federation")
    part: str = "node"
    _struct: Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_struct", Struct(self.params))

    def validate(self, params: Any) -> None:
        try:
            self._struct.check(params, "")
        except SchemaViolation as e:
            raise RpcError(ErrorCode.PARAMS_INVALID, str(e)) from None


@dataclass(frozen=True)
class Update:
    name: str
    doc: str
    fields: Mapping[str, Field]
