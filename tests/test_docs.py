"""The user's documents: the option reference matches the code, every link in README and docs/ opens, no reference
a reader of the repository cannot follow, and CI runs the README's test command."""

import re
from pathlib import Path

from didi.options_doc import render

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_option_reference_is_generated_from_the_code():
    assert (ROOT / "docs" / "options.md").read_text() == render(), \
        "docs/options.md is stale: python -m didi.options_doc > docs/options.md"


def test_every_relative_link_and_cited_file_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.name}: {target}")
        if doc.name == "reference-log.md":  # a dated log: the files it names are in the git history
            continue
        for cited in re.findall(r"`((?:bench|docs|didi|tests)/[\w./-]+\.(?:md|json|png|py))`", text):
            if not (ROOT / cited).exists():
                missing.append(f"{doc.name}: {cited}")
    assert not missing, missing


def test_readme_cites_nothing_a_reader_cannot_open():
    text = (ROOT / "README.md").read_text()
    assert "§" not in text and not re.search(r"\bissue \d+", text, re.I)
    assert not re.search(r"\bE\d{2}\b", text), "experiment codes belong in docs/reference-log.md"
    assert len(text.encode()) < 16_000  # a user's document of about 15 KB; the research narrative lives in docs/


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    first = readme[:1500]
    assert "make test" in first and "make demo" in first
    assert "make test" in ci
    assert (ROOT / "LICENSE").is_file() and "Apache License" in (ROOT / "LICENSE").read_text()
