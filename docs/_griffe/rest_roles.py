"""A griffe extension for the API reference: the docstrings of this repository are written in
reST habits (``:class:`~pkg.Name```, a paragraph ending in ``::`` before a literal block, a list
right under its heading line), which Markdown renders as raw text. This rewrites each docstring
into the Markdown mkdocstrings renders, without changing a word of it:

- a Sphinx role becomes a code span of what it names (``:class:`~a.b.C``` → `` `C` ``,
  ``:func:`make``` → `` `make` ``, ``:mod:`a.b``` → `` `a.b` ``);
- a paragraph's closing ``::`` becomes ``:`` (the indented block under it is a code block);
- a list that starts right under a line of text gets the blank line Markdown needs;
- ``<`` outside code is escaped, so ``<run id>`` shows instead of vanishing as an HTML tag;
- an attribute without a docstring takes the ``#:`` comment lines right above it (the
  repository's way of documenting fields and constants) as its docstring.

Loaded by mkdocs.yml (``extensions: [docs/_griffe/rest_roles.py]``); nothing else imports it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`<]*?)(?:\s*<([^`>]*)>)?`")
LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def _role(match: re.Match[str]) -> str:
    text, target = match.group(1).strip(), match.group(2)
    if target is None and match.group(0).split("`", 1)[1].startswith("~"):
        text = text.rsplit(".", 1)[-1]
    return f"`{text}`"


def _escape_html(line: str) -> str:
    """``<`` outside code spans as ``&lt;`` (an autolink ``<https://...>`` stays)."""
    parts, last = [], 0
    for span in CODE_SPAN.finditer(line):
        parts.append(_escape_text(line[last : span.start()]))
        parts.append(span.group(0))
        last = span.end()
    parts.append(_escape_text(line[last:]))
    return "".join(parts)


def _escape_text(text: str) -> str:
    return re.sub(r"<(?!https?://)", "&lt;", text)


def to_markdown(docstring: str) -> str:
    """The Markdown form of a reST-flavoured docstring (see the module docstring)."""
    out: list[str] = []
    in_code = in_fence = False
    for line in ROLE.sub(_role, docstring).splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_fence or stripped.startswith("```"):
            out.append(line)
            continue
        previous = out[-1] if out else ""
        if line.startswith("    ") and (in_code or not previous.strip()):
            in_code = True  # an indented block after a blank line: a literal block, as written
            out.append(line)
            continue
        if stripped:
            in_code = False
        starts_list = LIST_ITEM.match(line) is not None
        if starts_list and previous.strip() and not previous.startswith(" "):
            if not LIST_ITEM.match(previous):
                out.append("")
        if stripped.endswith("::"):
            line = line.rstrip()[:-1]
        out.append(_escape_html(line))
    return "\n".join(out)


def comment_docstring(code: str, lineno: int) -> str | None:
    """The ``#:`` comment lines right above line ``lineno`` (1-based) of ``code``, as text."""
    lines = code.splitlines()
    found: list[str] = []
    index = lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(found) or None


class RestRoles(griffe.Extension):
    """Rewrites every docstring once, when its object is created."""

    def on_instance(self, *, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is None and obj.is_attribute and obj.lineno and hasattr(agent, "code"):
            text = comment_docstring(agent.code, obj.lineno)
            if text is not None:
                obj.docstring = griffe.Docstring(text, lineno=obj.lineno, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
