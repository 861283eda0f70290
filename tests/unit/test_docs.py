"""README and docs/ stand alone in a clone: links stay in the repository, the settings table is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_links_stay_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "SPEC.md" not in text, "SPEC.md is not in the repository"
    for target in LINK.findall(text):
        assert "://" not in target, f"{doc.name} links outside the repository: {target}"
        path = target.split("#")[0]
        if path:
            assert (doc.parent / path).exists(), f"{doc.name} links to a missing file: {target}"


def test_the_readme_settings_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("-->", text.index("<!-- settings: generated")) + 3
    table = text[start : text.index("<!-- end of settings -->")].strip()
    generated = subprocess.run(
        [sys.executable, "-m", "app.settings"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert table == generated, "the README's settings table is stale: run `make readme-settings`"
