"""Every command the docs give runs: each `snakemake` command of README.md, config/README.md, docs/ and the
configuration files' own headers dry-runs from a clean clone, and each `clinsum plan` command runs, so that a
configuration (or a combination of them) cannot ship unrun. The commands are read from the docs themselves."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, copy_checkout

pytestmark = pytest.mark.slow

COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:snakemake|clinsum plan)\b")
# commands that read what a run made (a report from results/) have nothing to dry-run
NEEDS_RESULTS = ("--report",)
# a command that needs a program besides Python runs where that program is installed
NEEDS_PROGRAM = {"--sdm conda": "conda"}


def _doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "config").glob("*.yaml"))]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) of every snakemake and clinsum plan command the docs give: in ```bash blocks (continued
    lines joined), in `inline code`, and in the `#   ...` usage lines of the configuration files."""
    found = []
    for path in _doc_files():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".md":
            lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                     for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
            # inline code that is a command with arguments, not a command's name in a sentence (`clinsum plan`)
            lines += [span for span in re.findall(r"`([^`\n]+)`", text) if " -" in span]
        else:
            lines = re.findall(r"^#\s+(.+)$", text, re.M)
        for line in lines:
            command = re.split(r"\s{2,}#", line)[0].strip()
            if any(flag in command for flag in NEEDS_RESULTS):
                continue
            if COMMAND.match(command) and (str(path.relative_to(REPO)), command) not in found:
                found.append((str(path.relative_to(REPO)), command))
    return found


def test_the_docs_give_a_command_for_every_configuration_file():
    commands = " ".join(command for _, command in documented_commands())
    for config in sorted((REPO / "config").glob("*.yaml")):
        if config.name != "config.yaml":  # the Snakefile's own configfile: every command runs it
            assert f"config/{config.name}" in commands, f"no documented command runs config/{config.name}"


@pytest.fixture(scope="module")
def clean_clone(tmp_path_factory) -> Path:
    """A clean clone with what the docs ask a user to put in place first: the corpora under resources/ (the
    sample ones, as stand-ins)."""
    clone = copy_checkout(tmp_path_factory.mktemp("clone"))
    shutil.copytree(SAMPLE, clone / "resources" / "multiclinsum")
    shutil.copytree(REPO / "resources" / "sample-multiclinsum2", clone / "resources" / "multiclinsum2")
    return clone


def _run(command: str, clone: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(clone / "workflow")}
    while re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[0] == "snakemake":
        words = [sys.executable, "-m", "snakemake", "-n", *words[1:]]
    else:  # clinsum plan
        words = [sys.executable, "-m", "clinsum", *words[1:]]
    return subprocess.run(words, cwd=clone, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("source, command", documented_commands(), ids=lambda value: value[:90])
def test_a_documented_command_runs(clean_clone, source, command):
    for flag, program in NEEDS_PROGRAM.items():
        if flag in command and shutil.which(program) is None:
            pytest.skip(f"{command!r} needs {program}, not installed here")
    done = _run(command, clean_clone)
    assert done.returncode == 0, f"{source}: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
