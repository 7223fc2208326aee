"""pyproject.toml lists its packages by hand: a subpackage missing there is absent from a wheel (a cluster's
pip install), while the editable install of the tests would still find it. Its dependency bounds must be the
versions the tests run, or a user may install a combination that no test has seen."""

from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project's CI runs 3.11
REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REQUIREMENTS = {r.name: r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}
BOUNDED = ["ray", "optuna", "pyarrow", "wandb", "torch", "torchvision"]  # APIs (or internals) that move under us


def test_every_subpackage_of_ness_sweep_is_listed_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "ness_sweep").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


@pytest.mark.parametrize("name", sorted(REQUIREMENTS))
def test_installed_version_satisfies_pyproject(name):
    """Upgrading a package in the test environment past its bound fails here, not silently in users' installs."""
    installed = version(name)
    assert REQUIREMENTS[name].specifier.contains(installed, prereleases=True), (name, installed,
                                                                                str(REQUIREMENTS[name].specifier))


@pytest.mark.parametrize("name", BOUNDED)
def test_bounds_admit_only_the_tested_release_series(name):
    """One lower bound, in the installed release's major series (>=2.60 for 2.60.0), and an upper one: widening
    the range to series the tests never ran fails here."""
    specifiers = REQUIREMENTS[name].specifier
    lowest = [Version(s.version).release for s in specifiers if s.operator == ">="]
    installed = Version(version(name)).release
    assert len(lowest) == 1 and lowest[0][0] == installed[0] and lowest[0] <= installed, (name, str(specifiers))
    assert any(s.operator in ("<", "<=") for s in specifiers), (name, str(specifiers))
