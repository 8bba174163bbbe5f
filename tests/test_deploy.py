"""The Snakemake workflow catalog's standardized usage: the workflow deployed with snakedeploy from a local clone
into an empty folder, as a module, dry-runs there once its configuration points at a corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, copy_checkout

pytestmark = pytest.mark.slow


def test_the_catalog_file_names_the_usage():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True and catalog["usage"]["report"] is True
    assert (REPO / "workflow" / "Snakefile").is_file() and (REPO / "config" / "README.md").is_file()
    assert (REPO / "Snakefile").read_text().count("include:") == 1  # the root only runs workflow/Snakefile


def test_snakedeploy_from_a_local_clone_then_a_dry_run(tmp_path):
    clone = copy_checkout(tmp_path / "clinsum")
    dest = tmp_path / "deployed"
    done = subprocess.run(["snakedeploy", "deploy-workflow", str(clone), str(dest), "--branch", "main"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["config", "profiles", "workflow"]
    snakefile = dest / "workflow" / "Snakefile"
    text = snakefile.read_text()
    assert "module clinsum:" in text and "use rule * from clinsum" in text
    # snakedeploy 0.17 writes a local clone's module path relative to the deployment ("workflow/Snakefile"), which
    # Snakemake reads beside the deploying Snakefile: a local deployment names the clone's Snakefile itself
    snakefile.write_text(text.replace('"workflow/Snakefile"', f'"{clone}/workflow/Snakefile"'))
    # as a user points the configuration at a corpus
    config = dest / "config" / "config.yaml"
    config.write_text(config.read_text().replace("{path: resources/sample,", f"{{path: {clone}/resources/sample,"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=dest, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout.split("Job stats:")[1].split("total")[0], re.M))
    assert {"ingest", "teacher", "crop", "train", "infer", "evaluate", "report", "submission", "all"} <= set(jobs)
