"""A small SVG flame graph from collapsed stacks (``py-spy record --format raw``).

py-spy's own SVG keeps every frame it saw (hundreds of KB for a busy node); this one keeps
what explains the profile: frames below ``--min-pct`` of all samples are dropped, frame
names are shortened to ``function (file)``, and the SVG has no script, so it stays a few tens
of KB and reads in any viewer (hover a box for its full name and share).

    py-spy record -d 10 -r 200 -f raw -o node.raw --pid PID --nonblocking
    python3 scripts/flamegraph.py node.raw --title "..." > docs/flamegraph.svg
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path
from typing import Any

WIDTH = 1200
ROW = 17
FONT = 11
CHAR_W = 6.2  # width of one character at FONT (monospace-ish estimate for trimming labels)


def short(frame: str) -> str:
    """``fn (path/to/file.py:123)`` -> ``fn (file.py)``."""
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    fn, path = m.groups()
    return f"{fn} ({path.rsplit('/', 1)[-1]})"


def load(path: Path) -> tuple[dict[str, Any], int]:
    root: dict[str, Any] = {"n": 0, "kids": {}}
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        node = root
        node["n"] += n
        for frame in stack.split(";"):
            name = short(frame)
            node = node["kids"].setdefault(name, {"n": 0, "kids": {}})
            node["n"] += n
    return root, total


def color(name: str) -> str:
    h = sum(name.encode()) % 60
    if "(node" in name or any(x in name for x in ("gateway", "websocket", "wsframe")):
        return f"hsl({20 + h % 30},85%,62%)"  # ours: warm
    if "sqlite" in name or "database" in name:
        return f"hsl({200 + h % 30},70%,65%)"  # storage: blue
    return f"hsl({40 + h % 20},60%,{70 + h % 10}%)"


def render(root: dict[str, Any], total: int, min_pct: float, title: str) -> str:
    rects: list[str] = []
    depth_max = 0
    min_n = total * min_pct / 100

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        for name, kid in sorted(node["kids"].items(), key=lambda kv: -kv[1]["n"]):
            if kid["n"] < min_n:
                continue
            w = WIDTH * kid["n"] / total
            depth_max = max(depth_max, depth)
            pct = 100 * kid["n"] / total
            fits = int((w - 4) / CHAR_W)
            label = name if len(name) <= fits else name[: max(0, fits - 2)] + ".."
            y = depth * ROW
            rects.append(
                f"<g><title>{html.escape(name)} — {pct:.1f}%</title>"
                f'<rect x="{x:.1f}" y="{{Y{y}}}" width="{w:.1f}" height="{ROW - 1}" '
                f'fill="{color(name)}" rx="2"/>'
                + (
                    f'<text x="{x + 3:.1f}" y="{{T{y}}}">{html.escape(label)}</text>'
                    if len(label) > 2
                    else ""
                )
                + "</g>"
            )
            walk(kid, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    height = (depth_max + 1) * ROW + 40
    out = []
    for r in rects:  # icicle rows drawn bottom-up: the root at the bottom, like a flame

        def sub(m: re.Match[str]) -> str:
            kind, y = m.group(1), int(m.group(2))
            top = height - 20 - y - ROW
            return str(top if kind == "Y" else top + ROW - 5)

        out.append(re.sub(r"\{([YT])(\d+)\}", sub, r))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">'
        f'<rect width="100%" height="100%" fill="#fff"/>'
        f'<text x="4" y="14" font-size="13">{html.escape(title)} ({total} samples; '
        f"frames under {min_pct}% dropped)</text>" + "".join(out) + "</svg>\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("raw", type=Path, help="py-spy --format raw output")
    ap.add_argument("--min-pct", type=float, default=0.5)
    ap.add_argument("--title", default="Fedgram node")
    args = ap.parse_args()
    root, total = load(args.raw)
    if not total:
        raise SystemExit("no samples")
    sys.stdout.write(render(root, total, args.min_pct, args.title))


if __name__ == "__main__":
    main()
