"""The documentation site builds with ``mkdocs build --strict``: a link to a page or an anchor
that does not exist, a page left out of the nav, or an API reference entry that does not resolve
fails the build, and so this test (``make test`` runs it; ``make docs-build`` is the same build).
"""

from __future__ import annotations

import os
import subprocess
import sys

from code_blocks import REPO


def test_the_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    problems = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0, "\n".join(problems) or result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "steps.html").exists()
