"""pyproject.toml lists its packages by hand: a subpackage missing there is absent from a wheel (a cluster's
pip install), while the editable install of the tests would still find it."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project's CI runs 3.11
REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_of_ness_sweep_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "ness_sweep").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
