"""A non-editable install holds the whole package: the wheel built from a clean checkout carries every module of
workflow/clinsum/ (subpackages included: clinsum.train) and nothing else, and `pip install --no-deps` of that
wheel into a throwaway virtual environment imports every stage module from the installed copy, not from this
checkout, and installs the `clinsum` command."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, copy_checkout

pytestmark = pytest.mark.slow

PACKAGE = REPO / "workflow" / "clinsum"


def _listed(folder: str) -> list[str]:
    return subprocess.run(["git", "ls-files", "-co", "--exclude-standard", folder], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.split()


def package_tree() -> set[str]:
    """Every file of the package in the checkout, as its path in a wheel (clinsum/...)."""
    return {str(Path(name).relative_to("workflow")) for name in _listed("workflow/clinsum")}


def wheel_tree() -> set[str]:
    """What the wheel must hold: the package tree, and the config schema (workflow/schemas/) as clinsum/schemas/."""
    schemas = {f"clinsum/schemas/{Path(name).name}" for name in _listed("workflow/schemas")}
    assert "clinsum/schemas/config.schema.yaml" in schemas
    return package_tree() | schemas


def module_names() -> list[str]:
    """Every module of the package but clinsum.__main__ (which runs the command line when imported)."""
    names = []
    for name in sorted(package_tree()):
        if name.endswith(".py"):
            parts = list(Path(name).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] != "__main__":
                names.append(".".join(parts))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = copy_checkout(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the build backend (setuptools) of this environment, no download
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    (built,) = out.glob("clinsum-*.whl")
    return built


def test_the_package_tree_has_every_stage():
    names = module_names()
    # the stages the rules run, and the training subpackage that a plain `packages = ["clinsum"]` left out
    for stage in ("clinsum.cli", "clinsum.ingest", "clinsum.split", "clinsum.teacher", "clinsum.crop",
                  "clinsum.train", "clinsum.infer", "clinsum.evaluate", "clinsum.report", "clinsum.submission",
                  "clinsum.reward", "clinsum.judge"):
        assert stage in names, f"{stage} is not in workflow/clinsum"
    assert any(name.startswith("clinsum.train.") for name in names), "clinsum.train has no modules"


def test_the_wheel_holds_exactly_the_package_tree(wheel):
    with zipfile.ZipFile(wheel) as archive:
        listed = set(archive.namelist())
        (info,) = {name.split("/")[0] for name in listed} - {"clinsum"}
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    package_files = {name for name in listed if not name.split("/")[0].endswith(".dist-info")}
    missing = wheel_tree() - package_files
    extra = package_files - wheel_tree()
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert not extra, f"the wheel holds files the package tree does not: {sorted(extra)}"
    assert info == "clinsum-0.1.0.dist-info"
    assert "clinsum = clinsum.cli:main" in entry_points


def test_a_non_editable_install_imports_every_stage(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    inner = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies come from this environment: its site-packages go on the new one's path (after the new
    # one's own; a path in a .pth file does not run that folder's .pth files, so this checkout's editable
    # install of clinsum, if any, stays out)
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (inner / "dependencies.pth").write_text("\n".join(sorted(outer)) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    script = (
        "import importlib, json, sys\n"
        f"names = {module_names()!r}\n"
        "files = {name: importlib.import_module(name).__file__ for name in names}\n"
        "from clinsum import settings\n"
        "files['schema'] = str(settings.SCHEMA_PATH)\n"
        "files['schema_defaults'] = settings.parse_settings({'split': {}})\n"
        "print(json.dumps(files))\n"
    )
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(done.stdout.splitlines()[-1])
    # the stages read their defaults from the schema the wheel carries
    assert files.pop("schema") == str(inner / "clinsum" / "schemas" / "config.schema.yaml")
    from clinsum.settings import parse_settings

    expected = parse_settings({"split": {}})
    assert expected["split"]["seed"] == 42
    assert files.pop("schema_defaults") == expected
    assert sorted(files) == module_names()
    for name, file in files.items():
        assert Path(file).is_relative_to(inner / "clinsum"), f"{name} imported from {file}, not the installed wheel"
    # the console script the rules' documentation names
    done = subprocess.run([str(venv / "bin" / "clinsum"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan" in done.stdout
