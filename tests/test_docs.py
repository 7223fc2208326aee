"""The documentation stays true to the code: the settings reference matches the schema, and the README stays a
short entry point whose links into the docs lead to pages that exist. (`mkdocs build --strict` runs in .ci/run.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ness_sweep.config import SweepConfig, help_text
from ness_sweep.methods import groups_help

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 200
DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+)(#[^)\s]*)?\)")


def settings_reference():
    """docs/settings_reference.py as a module: docs/ is a folder of pages, not a package."""
    spec = importlib.util.spec_from_file_location("settings_reference", ROOT / "docs" / "settings_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_reference_matches_the_schema():
    reference = settings_reference()
    committed = reference.PAGE.read_text(encoding="utf-8") if reference.PAGE.exists() else ""
    assert committed == reference.render(), (
        f"{reference.PAGE.relative_to(ROOT)} is out of date with the schema: run `{reference.COMMAND}`")


def test_settings_reference_lists_every_key_help_lists():
    """Every key `--help` of the sweep command prints (run, sweep and method settings) has a row of its own."""
    page = settings_reference().PAGE.read_text(encoding="utf-8")
    keys = [line.split("=", 1)[0].strip() for line in (help_text(SweepConfig) + "\n" + groups_help()).splitlines()
            if line.startswith("  ")]
    assert len(keys) > 40
    missing = [key for key in keys if f"| `{key}` |" not in page]
    assert not missing, f"keys without a row in the settings reference: {missing}"


def test_readme_is_a_short_entry_point_that_opens_with_the_setup_commands():
    """At most README_MAX_LINES lines; its first command installs and sweeps, its second installs and runs the
    tests, as .ci/run does."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    commands = [line.strip() for line in lines if line.startswith("    ")]
    assert commands[:2] == ['pip install -e . && python -m ness_sweep.run space=rank_threshold',
                            'pip install -e ".[test]" && python -m pytest -q']
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_links_into_the_docs_lead_to_pages():
    links = DOCS_LINK.findall(README.read_text(encoding="utf-8"))
    assert len(links) >= 5, "the README should link into the docs"
    missing = sorted({path for path, _ in links if not (ROOT / path).is_file()})
    assert not missing, f"README.md links to docs pages that do not exist: {missing}"
