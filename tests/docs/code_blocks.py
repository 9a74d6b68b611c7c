"""The fenced ``python`` blocks of the documentation (``README.md``, ``docs/**/*.md``) and how
each is tested, read from the HTML comment right before its fence (``docs/contributing.md``,
"Code blocks are tests"):

- no comment: run as a program of its own;
- ``<!-- docs-test: continues -->``: appended to the page's previous block (one program);
- ``<!-- docs-test: airflow-dag -->``: a DAG file, parsed by Airflow's ``DagBag``;
- ``<!-- docs-test: prefect -->``: run under one temporary Prefect server shared by these blocks;
- ``<!-- docs-test: compile-only: <why> -->``: compiled only;
- ``<!-- docs-test: skip: <why> -->``: neither run nor compiled.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ("run", "continues", "airflow-dag", "prefect", "compile-only", "skip")
#: kinds that must say why they are not run
NEED_REASON = ("compile-only", "skip")

MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>[a-z-]+)\s*(?::\s*(?P<reason>.*?))?\s*-->$")
OPEN = re.compile(r"^\s*```python\b")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # 1-based line of the opening fence
    kind: str
    reason: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """Every page whose blocks are tested: the README and the site's pages."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The page's python blocks, each with the kind its marker gives (``continues`` folded into
    the block it continues). Raises ``ValueError`` for an unknown marker, a ``compile-only`` or
    ``skip`` without a reason, a ``continues`` with nothing before it, or an unclosed fence."""
    page = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"),
            None,
        )
        if end is None:
            raise ValueError(f"{page}:{i + 1}: a ```python fence that is never closed")
        code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"  # a block in a list item
        kind, reason = _marker(page, lines, i)
        if kind == "continues":
            if not found:
                raise ValueError(f"{page}:{i + 1}: 'continues' with no block before it")
            last = found.pop()
            found.append(replace(last, code=last.code + "\n" + code))
        else:
            found.append(Block(page, i + 1, kind, reason, code))
        i = end + 1
    return found


def _marker(page: str, lines: list[str], fence: int) -> tuple[str, str]:
    previous = next((lines[j].strip() for j in range(fence - 1, -1, -1) if lines[j].strip()), "")
    if not previous.startswith("<!--"):
        return "run", ""
    match = MARKER.match(previous)
    if match is None or match.group("kind") not in KINDS:
        raise ValueError(f"{page}:{fence + 1}: unknown docs-test marker {previous!r}")
    kind, reason = match.group("kind"), (match.group("reason") or "").strip()
    if kind in NEED_REASON and not reason:
        raise ValueError(f"{page}:{fence + 1}: '{kind}' must say why ('{kind}: <why>')")
    return kind, reason


def all_blocks() -> list[Block]:
    return [block for path in pages() for block in blocks_of(path)]
