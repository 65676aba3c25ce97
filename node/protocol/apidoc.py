"""Render docs/api.md from the schema, so the reference is never out of date."""

from __future__ import annotations

from .api import COMMON_ERRORS, METHODS, UPDATES
from .errors import DESCRIPTIONS, ErrorCode
from .schema import DictOf, Field, List, Nullable, Struct, Type

_ACCESS = {
    "public": "anyone, before sign-in",
    "user": "a signed-in device",
    "admin": "admin socket only",
    "node": "a peer node's link only (its handshake proved a node key)",
}


def _fields(fields: dict[str, Field] | object, indent: str = "") -> list[str]:
    assert isinstance(fields, dict)
    if not fields:
        return [f"{indent}- *(none)*"]
    out = []
    for name, f in fields.items():
        opt = "" if f.required else " *(optional)*"
        doc = f" — {f.doc}" if f.doc else ""
        out.append(f"{indent}- `{name}`: `{f.type.describe()}`{opt}{doc}")
        if isinstance(f.type, Struct) and not f.type.name:
            out.extend(_fields(dict(f.type.fields), indent + "  "))
    return out


def _type(t: Type) -> list[str]:
    if isinstance(t, Struct) and t.name:
        return [f"`{t.name}` (see Types)"]
    if isinstance(t, Struct):
        return _fields(dict(t.fields))
    return [f"`{t.describe()}`"]


def _named(t: Type, found: dict[str, Struct]) -> None:
    """Collect named structs reachable from a type, for the Types section."""
    if isinstance(t, Struct):
        if t.name and t.name not in found:
            found[t.name] = t
        for f in t.fields.values():
            _named(f.type, found)
    elif isinstance(t, List | Nullable | DictOf):
        inner = t.item if isinstance(t, List) else t.inner if isinstance(t, Nullable) else t.value
        _named(inner, found)


def render() -> str:
    out = [
        "# Fedgram API reference",
        "",
        "Generated from `node/protocol/api.py` by `fedgram dev api-docs`; do not edit by hand.",
        "",
        "Requests are CBOR maps `{id, m, p}` sent in sealed frames after the handshake; the "
        "node answers `{id, r}` or `{id, e: {code, message, retry_after?}}` and pushes "
        "`{u: [update, ...]}`.",
        "",
        "**Addresses.** A user is `name@node`. Results and updates show the *display form*, "
        "`alice@n2`: the node by the name this node knows it by (its own configured name, or "
        "its local name for a peer). Signed events (the `raw` of `admin.chatExport`) and chat "
        "ids use the *canonical form* `alice@<node id>`, the node id being the fingerprint of "
        "its key (`node_id`), which means the same user on every node. Parameters that name a "
        "user accept `name`, `@name`, `name@node` or `name@<node id>`. Events signed before "
        "version 5 of the database carry `name@<the node's name then>`; they are shown like "
        "the others.",
        "",
        "Every method may also answer: "
        + ", ".join(f"`{c}`" for c in COMMON_ERRORS)
        + "; methods for a signed-in device answer `AUTH_REQUIRED` before sign-in.",
        "",
        "Integers are `int[MIN..MAX]` (ids, seqs, counts, sizes and offsets: at most 2^53-1, "
        "exact in JSON/JavaScript) or `int64` (signed 64-bit, for client-chosen ids). A "
        "value out of range answers `PARAMS_INVALID`; one beyond CBOR's 64-bit integers (a bignum "
        "tag) cannot be decoded and answers `BAD_FRAME`.",
        "",
        "## Methods",
        "",
    ]
    for name in sorted(METHODS):
        m = METHODS[name]
        out += [
            f"### `{name}`",
            "",
            m.doc,
            "",
            f"Access: {_ACCESS[m.access]}. Rate-limit group: `{m.rate_group}`.",
            "",
            "Parameters:",
            "",
        ]
        out += _fields(dict(m.params))
        out += ["", "Result:", "", *_type(m.result)]
        if m.errors:
            out += ["", "Errors: " + ", ".join(f"`{e}`" for e in m.errors)]
        out.append("")
    types: dict[str, Struct] = {}
    for m in METHODS.values():
        _named(m.result, types)
    out += ["## Types", ""]
    for name in sorted(types):
        out += [f"### `{name}`", "", *_fields(dict(types[name].fields)), ""]
    out += ["## Updates", ""]
    for name in sorted(UPDATES):
        u = UPDATES[name]
        out += [f"### `{name}`", "", u.doc, "", *_fields(dict(u.fields)), ""]
    out += ["## Error codes", "", "| code | meaning |", "|---|---|"]
    for code in ErrorCode:
        out.append(f"| `{code}` | {DESCRIPTIONS.get(code, '')} |")
    out.append("")
    return "\n".join(out)
