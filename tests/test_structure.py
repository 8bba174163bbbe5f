"""The package's shape (issue 'One floor of stages over shared contracts'): no stage imports another stage,
the schema is the one source of defaults, no function grows past a screen, and every rule's code inputs
are the import closure of the module it runs."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import yaml

from clinsum import codegraph
from clinsum.cli import COMMANDS
from conftest import REPO

PACKAGE = REPO / "workflow" / "clinsum"
# the stages: each runs as its own command and passes files to the next ones through shared record formats
STAGES = sorted(set(COMMANDS.values()) - {"plan"})
MAX_FUNCTION_LINES = 80


def test_no_stage_imports_another_stage():
    crossing = {}
    for stage in STAGES:
        others = [name for name in codegraph.closure(stage) if name.split(".")[0] in STAGES and name.split(".")[0] != stage]
        if others:
            crossing[stage] = others
    assert crossing == {}, f"stages importing other stages (directly or through a shared module): {crossing}"


def test_import_closure_covers_what_a_stage_really_imports():
    """The closure read from the source (codegraph) holds every package module that importing the stage
    loads, so a rule's code inputs never miss a file its jobs run."""
    import subprocess

    for stage in STAGES:
        loaded = subprocess.run(
            [sys.executable, "-c", f"import sys, clinsum.{stage}; print(' '.join(sorted(sys.modules)))"],
            capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO / "workflow")},
        ).stdout.split()
        ours = {name[len("clinsum."):] for name in loaded if name.startswith("clinsum.")}
        assert ours <= set(codegraph.closure(stage)), (stage, ours - set(codegraph.closure(stage)))


def test_codegraph_reads_relative_absolute_and_lazy_imports(tmp_path, monkeypatch):
    assert "chat" in codegraph.closure("crop") and "io" in codegraph.closure("crop")
    assert "train.loop" in codegraph.closure("train") or "train" in codegraph.direct_imports("train.loop")
    # function-level imports count: train.loop imports generation lazily through evaluation
    assert "generation" in codegraph.closure("train")
    assert "cli" not in codegraph.closure("teacher")
    assert set(codegraph.closure("__main__")) == {"__main__", "cli", "io"}


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE), node


def test_no_function_is_longer_than_a_screen():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def schema_defaults() -> dict[str, list]:
    """Every property name of the schema that has a default, with its default values."""
    found: dict[str, list] = {}

    def walk(node):
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    found.setdefault(name, []).append(sub["default"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    return found


def _constant(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


# names of what holds configuration in the package (a `.get` on other data, an eval file, is not a default)
SETTINGS_NAMES = ("settings", "config", "section", "spec", "teacher", "infer", "train", "evaluate", "judge",
                  "bertscore", "bootstrap", "vllm", "kl", "selection", "corpus", "synthetic", "split", "prompts")


def _receiver(node) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def restated_defaults() -> list[str]:
    """Places where code gives a schema key a fallback value: settings.get(key, value), setdefault(key, value),
    an argparse default for an option named as a schema key, or a module-level dict of defaults."""
    defaults = schema_defaults()
    found = []
    for path, tree in ((p.relative_to(PACKAGE), ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            method, args = node.func.attr, node.args
            if method in ("get", "setdefault") and len(args) == 2 and isinstance(args[0], ast.Constant):
                key, value = args[0].value, _constant(args[1])
                receiver = _receiver(node.func.value).lower()
                if key in defaults and value is not None and any(name in receiver for name in SETTINGS_NAMES):
                    found.append(f"{path}:{node.lineno} {method}({key!r}, {value!r})")
            if method == "add_argument":
                option = next((a.value for a in args if isinstance(a, ast.Constant) and str(a.value).startswith("--")), "")
                key = option.lstrip("-").replace("-", "_")
                for keyword in node.keywords:
                    if keyword.arg == "default" and key in defaults and _constant(keyword.value) in defaults[key]:
                        found.append(f"{path}:{node.lineno} --{key} default {_constant(keyword.value)!r}")
        for node in tree.body:  # DEFAULTS = {"backend": "vllm", ...}
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                restated = [_constant(k) for k, v in zip(node.value.keys, node.value.values)
                            if _constant(k) in defaults and _constant(v) in defaults[_constant(k)]]
                if len(restated) >= 2:
                    found.append(f"{path}:{node.lineno} a dict of defaults: {', '.join(map(str, restated))}")
    return found


def test_the_schema_is_the_one_source_of_defaults():
    assert restated_defaults() == []


def test_the_defaults_check_finds_a_restated_default(tmp_path, monkeypatch):
    """The check above can fail: a planted `.get("max_new_tokens", 512)` is found."""
    planted = PACKAGE / "_planted_default.py"
    planted.write_text('DEFAULTS = {"backend": "vllm", "batch_size": 8}\n\n\ndef f(settings):\n'
                       '    return settings["infer"].get("max_new_tokens", 512)\n')
    try:
        assert restated_defaults() == ["_planted_default.py:5 get('max_new_tokens', 512)",
                                       "_planted_default.py:1 a dict of defaults: backend, batch_size"]
    finally:
        planted.unlink()


def test_a_command_imports_no_model_library_until_it_runs():
    """`clinsum <command> --help` (and the parser the rules start with) imports the command's module alone, and no
    module imports torch, transformers, vLLM or datasets at its top: a stage imports them when it runs."""
    import subprocess

    for command, module in COMMANDS.items():
        loaded = subprocess.run(
            [sys.executable, "-c", f"import sys; from clinsum.cli import build_parser; build_parser({command!r}); "
             "print(' '.join(sorted(sys.modules)))"],
            capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO / "workflow")},
        ).stdout.split()
        heavy = sorted({"torch", "transformers", "vllm", "datasets", "bert_score"} & set(loaded))
        assert heavy == [], f"clinsum {command} imports {heavy} before it runs"
