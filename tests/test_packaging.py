"""The install is reproducible: every declared dependency is bounded and pinned in constraints.txt, and the pins
satisfy the bounds (a release on the registry cannot change what CI or the README installs)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra != "bench":  # benchmark-only tools are pinned too, but need no upper bound
            reqs += [Requirement(r) for r in items]
    return [r for r in reqs if canonicalize_name(r.name) != "hpo"]  # hpo[all]: the extras themselves


def test_every_declared_dependency_has_an_upper_bound_and_a_pin_that_satisfies_it():
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in req.specifier), \
            f"{req} has no upper bound: a new major release could break every fresh install"
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside the declared {req.specifier}"


def test_the_installed_packages_are_the_pinned_ones():
    """CI installs with -c constraints.txt; what it tests is what the pins say."""
    pins = _pins()
    wrong = []
    for req in _declared():
        name = canonicalize_name(req.name)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        if installed != pins[name]:
            wrong.append(f"{req.name} {installed} (pinned {pins[name]})")
    assert not wrong, "installed versions differ from constraints.txt: " + ", ".join(wrong)


def test_the_readme_installs_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install [^&\n]*", readme.split("## ", 1)[0])
    assert len(installs) >= 2 and all("-c constraints.txt" in cmd for cmd in installs), installs
