"""The stack printout and the declared dependency ranges: the suite runs on versions pyproject.toml admits."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import mlflow
import ray
import torch
import torchvision
from packaging.requirements import Requirement
from packaging.version import Version

from lmft_core.stack import PACKAGES, library_versions

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"]["test"]]
    return {r.name.replace("-", "_").lower(): r for r in reqs}


def test_stack_prints_each_library_with_the_version_the_module_reports():
    out = subprocess.run([sys.executable, "-m", "lmft_core.stack"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("stack: ") and out.count("\n") == 1
    printed = dict(item.rsplit(" ", 1) for item in out.removeprefix("stack: ").strip().split(", "))
    assert list(printed) == list(PACKAGES)
    # the modules' own version attributes, not importlib.metadata, as the reference
    for name, module in (("torch", torch), ("torchvision", torchvision), ("ray", ray), ("mlflow", mlflow)):
        assert Version(printed[name]) == Version(module.__version__.split("+")[0]) or \
            printed[name] == module.__version__, name


def test_installed_versions_lie_in_the_declared_ranges():
    """A suite run outside the ranges pyproject.toml declares would vouch for versions nobody declared."""
    reqs = declared()
    checked = 0
    for pkg, installed in library_versions().items():
        req = reqs.get(pkg.replace("-", "_").lower())
        if req is None or installed == "not installed":
            continue
        assert req.specifier.contains(Version(installed), prereleases=True), f"{pkg} {installed} not in {req}"
        checked += 1
    assert checked >= 8


def test_every_stack_library_has_a_bounded_range():
    """Each library whose behaviour the tests pin (FLOP counter, MLflow internals, Ray internals) has an upper
    bound, so a fresh install cannot resolve a release the suite never ran on."""
    reqs = declared()
    for pkg in ("torch", "torchvision", "ray", "mlflow", "open_clip_torch", "decord", "transformers"):
        spec = reqs[pkg].specifier
        assert any(s.operator in ("<", "<=", "==") for s in spec), f"{pkg}: {spec} has no upper bound"
        assert any(s.operator in (">=", "==", "~=") for s in spec), f"{pkg}: {spec} has no lower bound"
