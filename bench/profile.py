"""Where the worker's time goes: a summary of py-spy's collapsed stacks (``--format raw``).

Each line of the input is ``frame;frame;...;frame <samples>``, a frame being
``function (path:line)``. The summary gives the share of samples by package
and file of the innermost frame (self time), the top functions by self time,
and the project's own functions by inclusive time, line numbers dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")
_SITE = re.compile(r"site-packages/([A-Za-z0-9_]+)")
_STDLIB = re.compile(r"python3\.\d+/([A-Za-z0-9_]+)")
_PROJECT = frozenset({"worker", "handlers", "schemas"})
_FILE = re.compile(r"\(([^()]+?)(?::\d+)?\)$")


def parse(text: str) -> list[tuple[list[str], int]]:
    """(frames, samples) per stack; lines that are not stacks are skipped."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";") if frame]
        stacks.append((frames, int(count)))
    return stacks


def source(frame: str) -> str:
    """The file of a frame: ``f (worker/store/sqlite.py)`` -> ``worker/store/sqlite.py``."""
    match = _FILE.search(frame)
    return match.group(1) if match else frame


def area(frame: str) -> str:
    """The package a frame belongs to: a site-packages name, ``stdlib:<module>``, or a top-level name.

    py-spy names most files relative to their ``sys.path`` entry (``aiohttp/client.py``,
    ``worker/dispatcher.py``) and some in full; both give the same package.
    """
    if match := _SITE.search(frame):
        return match.group(1)
    if match := _STDLIB.search(frame):
        return f"stdlib:{match.group(1)}"
    path = source(frame).lstrip("/")
    return path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")


def summarize(path: Path, top: int = 25) -> str:
    """A Markdown summary of the collapsed stacks in ``path``."""
    stacks = parse(path.read_text(errors="replace"))
    total = sum(count for _, count in stacks)
    if not total:
        return f"# Profile {path.name}\n\nNo samples.\n"
    by_area: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_self: Counter[str] = Counter()
    by_inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        by_area[area(frames[-1])] += count
        by_file[source(frames[-1])] += count
        by_self[frames[-1]] += count
        for frame in set(frames):
            if area(frame) in _PROJECT:
                by_inclusive[frame] += count

    def table(title: str, counts: Counter[str]) -> list[str]:
        lines = [f"## {title}", "", "| share | samples | where |", "|---:|---:|---|"]
        for name, count in counts.most_common(top):
            lines.append(f"| {100 * count / total:.1f}% | {count} | `{name}` |")
        return [*lines, ""]

    out = [
        f"# Profile {path.name}",
        "",
        f"{total} samples of the worker while it was busy (py-spy, idle excluded).",
        "",
    ]
    out += table("Self time by package", by_area)
    out += table("Self time by file", by_file)
    out += table("Self time by function", by_self)
    out += table("Inclusive time by project function (worker/, handlers/)", by_inclusive)
    return "\n".join(out)
