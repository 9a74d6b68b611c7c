"""A real headless Chromium (the distribution's package) for the page tests: the DOM of a page
after its own script ran (``--dump-dom`` with a virtual-time budget), parsed into a small tree.

Without Chromium the browser tests skip with the reason (``needs_chromium``); set
``CURATOR_FLOWS_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from typing import Any

import pytest

CHROMIUM = os.environ.get("CURATOR_FLOWS_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (Debian: apt-get install -y chromium): the page is tested "
    "in a real headless browser",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def dump_dom(url: str, budget_ms: int = 8000, timeout: float = 180.0) -> Dom:
    """The page at ``url`` as the browser holds it once its script ran (``budget_ms`` of
    virtual time, which waits for the page's own requests)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="curator-chromium-") as profile:
        command = [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ]
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its helper processes go with it
        )
        try:
            out, err = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=30)
    assert child.returncode == 0, f"chromium exited {child.returncode}: {err[-3000:]}"
    return Dom.parse(out)


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: Any) -> list[Node]:
        """Elements of ``tag`` whose attributes hold ``attrs`` (``True``: present; ``_``
        in a name stands for ``-``)."""
        wanted = {key.replace("_", "-"): value for key, value in attrs.items()}
        return [
            node
            for node in self.iter()
            if (tag is None or node.tag == tag)
            and all(
                (key in node.attrs) if value is True else node.attrs.get(key) == value
                for key, value in wanted.items()
            )
        ]

    def find(self, tag: str | None = None, **attrs: Any) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'} {attrs}> in the page"
        return found[0]


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


class Dom(HTMLParser):
    """The serialized DOM parsed back into :class:`Node` s (``root``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    @classmethod
    def parse(cls, text: str) -> Dom:
        dom = cls()
        dom.feed(text)
        dom.close()
        return dom

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)

    # ------------------------------------------------------------------ what tests read
    @property
    def state(self) -> str | None:
        return self.root.find("body").attrs.get("data-state")

    def rows(self) -> list[Node]:
        return self.root.find_all("tr", data_row=True)

    def row_numbers(self) -> list[int]:
        return [int(node.attrs["data-row"]) for node in self.rows()]

    def value(self, key: str) -> str:
        """The text of the facts cell ``data-key=key``."""
        return self.root.find("td", data_key=key).text.strip()

    def by_id(self, element_id: str) -> Node:
        return self.root.find(id=element_id)
