"""profiles/slurm on a real single-node SLURM cluster.

tests/slurm/start.sh starts munge, MariaDB + slurmdbd (accounting), slurmctld and slurmd under a temporary
directory, installing Debian's packages with apt-get when they are missing. The test is skipped only where
SLURM cannot be installed (start.sh exits 3: not root, no apt-get, or apt-get failed); any other failure
fails it. The node declares 4 GPUs of type t4 with no hardware behind them, so SLURM really accepts,
schedules and accounts the `--gpus=N` and `--gpus=t4:N` requests of the GPU rules.

A workflow runs through `--profile profiles/slurm` until it finishes. Then:
- every job of the dry run ran, and none locally but `all`;
- sacct lists exactly one SLURM job per Snakemake job (the plugin's --comment names rule and wildcards),
  all COMPLETED with every step, named with this run's id, in the profile's partition and account;
- the sbatch call the plugin logged for each job, and the job's ReqTRES in sacct, carry the job's own
  resources (as the job's own SLURM log shows them): -t runtime, --mem mem_mb, --cpus-per-task threads, and
  --gpus exactly for the GPU rules, with no --ntasks-per-gpu (SLURM refuses it beside --gpus here).
Every daemon is stopped by PID afterwards (tests/slurm/stop.sh), whatever happened.

The real workflow runs on config/tiny.yaml plus an overlay that turns its GPU requests on (teacher: 2
GPUs, as tensor parallelism would; train: 1; infer: 1 T4), in a copy of the checkout (tracked files and
untracked ones git does not ignore). Targets: rule all, or CLINSUM_SLURM_TEST_TARGETS (space-separated).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

from conftest import REPO, copy_checkout
SLURM_SCRIPTS = REPO / "tests" / "slurm"
# Only the aggregating target rule may run on the submitting host; every real job goes to SLURM.
LOCAL_RULES = {"all"}


# ---------------------------------------------------------------------------------------------------
# The cluster


def read_env_file(path: Path) -> dict[str, str]:
    """`export KEY=VALUE` lines of start.sh's env.sh."""
    env = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"export (\w+)=(.*)", line.strip())
        if match:
            env[match[1]] = match[2]
    return env


def recorded_pids(cluster_dir: Path) -> list[tuple[str, int, str]]:
    rows = []
    for name in ("pids", "pids.stopped"):
        path = cluster_dir / name
        if path.exists():
            for line in path.read_text().splitlines():
                daemon, pid, starttime = line.split()
                rows.append((daemon, int(pid), starttime))
    return rows


def process_alive(pid: int, starttime: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] == starttime and fields[0] not in ("Z", "X")  # a zombie has stopped


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A started cluster: its directory and the environment for SLURM commands and Snakemake."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail(
            "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'", pytrace=False
        )
    cluster_dir = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    start = subprocess.run(
        ["bash", str(SLURM_SCRIPTS / "start.sh"), str(cluster_dir)], capture_output=True, text=True
    )
    if start.returncode == 3:
        pytest.skip(f"SLURM cannot be installed here: {(start.stderr.strip().splitlines() or ['?'])[-1]}")
    try:
        assert start.returncode == 0, f"start.sh failed:\n{start.stdout}\n{start.stderr}"
        print(f"\nSLURM up in {time.monotonic() - started:.1f} s:\n{start.stdout}")
        env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_"))}
        env.update(read_env_file(cluster_dir / "env.sh"))
        # what profiles/slurm reads for the partition and the account
        env["CLINSUM_SLURM_PARTITION"] = env["CLINSUM_TEST_SLURM_PARTITION"]
        env["CLINSUM_SLURM_ACCOUNT"] = env["CLINSUM_TEST_SLURM_ACCOUNT"]
        env["HF_HUB_OFFLINE"] = "1"
        env["TOKENIZERS_PARALLELISM"] = "false"
        yield {"dir": cluster_dir, "env": env}
    finally:
        # runs after a failed start.sh too (it stops what it started itself; this is then a no-op)
        started = time.monotonic()
        stop = subprocess.run(
            ["bash", str(SLURM_SCRIPTS / "stop.sh"), str(cluster_dir)], capture_output=True, text=True
        )
        print(f"\nSLURM stopped in {time.monotonic() - started:.1f} s:\n{stop.stdout}{stop.stderr}")
        survivors = [row for row in recorded_pids(cluster_dir) if process_alive(row[1], row[2])]
        assert stop.returncode == 0 and not survivors, f"stop.sh left {survivors}:\n{stop.stdout}{stop.stderr}"
        assert not Path("/run/slurm/conf").is_symlink() or os.readlink("/run/slurm/conf") != str(
            cluster_dir / "etc"
        ), "stop.sh left the /run/slurm/conf link"


# ---------------------------------------------------------------------------------------------------
# Reading Snakemake's job listings, the plugin's sbatch calls and sacct


def parse_jobs(log: str) -> list[dict]:
    """The job blocks Snakemake prints (dry run or real run): rule, local, jobid, wildcards, threads, resources."""
    jobs = []
    for match in re.finditer(r"^(localrule|rule) (\w+):\n((?:    .*\n)*)", log, flags=re.M):
        fields = dict(
            re.fullmatch(r"    (\w+): (.*)", line).groups()
            for line in match[3].splitlines()
            if re.fullmatch(r"    (\w+): (.*)", line)
        )
        wildcards = dict(item.split("=", 1) for item in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        resources = dict(item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item)
        jobs.append(
            {
                "rule": match[2],
                "local": match[1] == "localrule",
                "jobid": int(fields["jobid"]),
                "wildcards": wildcards,
                "threads": int(fields.get("threads", 1)),
                "resources": resources,
            }
        )
    return jobs


def job_key(job: dict) -> tuple:
    return job["rule"], tuple(sorted(job["wildcards"].items()))


def parse_submitted_jobs(log: str) -> list[dict]:
    """The jobs submitted to SLURM, as each ran there. Plugin 2.8 prints each job's block in the main log, as
    Snakemake does for local jobs; 2.6.1 (the one envs/cpu.lock holds: vLLM's mistral_common keeps numpy < 2.4,
    which 2.7 and later refuse) prints none. So each job is read from its own SLURM log (kept with
    --slurm-keep-successful-logs), named by Snakemake's 'Job N has been submitted with SLURM jobid M (log: ...)':
    the block the job's Snakemake printed inside SLURM (rule, wildcards, threads, resources), checked against the
    --target-jobs of the sbatch call that wrote that log."""
    targets = {}
    for call in parse_sbatch_calls(log).values():
        wrap = shlex.split(call["--wrap"])
        rule, _, spec = wrap[wrap.index("--target-jobs") + 1].partition(":")
        targets[call["--output"]] = (rule, dict(item.split("=", 1) for item in spec.split(",")) if spec else {})
    jobs = []
    for jobid, slurm_id, path in re.findall(
        r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.$", log, flags=re.M
    ):
        target = targets.get(path.removesuffix(f"{slurm_id}.log") + "%j.log")
        assert target, f"SLURM job {slurm_id} (log {path}) has no logged sbatch call"
        blocks = [job for job in parse_jobs(Path(path).read_text()) if not job["local"]]
        assert blocks, f"SLURM job {slurm_id}: its log {path} shows no job"
        job = {**blocks[0], "jobid": int(jobid)}
        assert (job["rule"], job["wildcards"]) == target, f"SLURM job {slurm_id} ran {job}, submitted as {target}"
        jobs.append(job)
    return jobs


def slurm_comment(job: dict) -> str:
    """The --comment the plugin gives a job: rule_<rule>[_wildcards_<values joined by _>]."""
    comment = f"rule_{job['rule']}"
    if job["wildcards"]:
        comment += "_wildcards_" + "_".join(job["wildcards"].values()).replace("/", "_")
    return comment


def parse_sbatch_calls(log: str) -> dict[str, dict[str, str]]:
    """The sbatch calls the plugin logged (--verbose), by --comment: option -> value."""
    calls = {}
    for line in re.findall(r"^sbatch call: (sbatch .*)$", log, flags=re.M):
        args = shlex.split(line)[1:]
        options, i = {}, 0
        while i < len(args):
            arg = args[i]
            if "=" in arg and arg.startswith("--"):
                key, value = arg.split("=", 1)
                options[key] = value
            elif arg in ("-A", "-p", "-t", "-D", "-C", "--mem", "--comment", "--job-name", "--output"):
                options[arg] = args[i + 1]
                i += 1
            else:
                options[arg] = ""
            i += 1
        assert options["--comment"] not in calls, f"two sbatch calls for {options['--comment']}"
        calls[options["--comment"]] = options
    return calls


def sacct_rows(env: dict, fields: list[str], *args: str) -> list[dict[str, str]]:
    out = subprocess.run(
        ["sacct", "-P", "-n", "-S", "2000-01-01", "-o", ",".join(fields), *args],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def tres(value: str) -> dict[str, str]:
    """sacct's ReqTRES (cpu=1,mem=2000M,gres/gpu=2,...) as a dict, memory in MB."""
    items = dict(item.split("=", 1) for item in value.split(",") if item)
    if "mem" in items:
        number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", items["mem"]).groups()
        items["mem"] = str(round(float(number) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "": 1}[unit]))
    return items


def expected_gpus(job: dict) -> str | None:
    """--gpus value the plugin must send for a job: N, or <model>:N with gpu_model; None without GPUs."""
    gpus = int(job["resources"].get("gpu", 0))
    model = job["resources"].get("gpu_model", "")
    if gpus <= 0:
        return None
    return f"{model}:{gpus}" if model else str(gpus)


# ---------------------------------------------------------------------------------------------------
# Running a workflow on the cluster and checking what SLURM did


# squeue reasons of a pending job that the cluster can never run as submitted (more CPUs, memory, time or
# nodes than the partition has): waiting for it would only end at the test's time limit.
NEVER_RUNS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
              "InvalidAccount", "InvalidQOS"}


def unrunnable_jobs(env: dict) -> list[str]:
    """Pending jobs that can never start, as 'id name (reason): request' lines."""
    listing = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i|%k|%r|%C cpus %m mem %l"],
                             env=env, capture_output=True, text=True).stdout
    rows = [line.split("|") for line in listing.splitlines() if line.count("|") == 3]
    return [f"{job} {comment} ({reason}): {request}" for job, comment, reason, request in rows if reason in NEVER_RUNS]


def stop_snakemake(proc: subprocess.Popen) -> None:
    # SIGINT: Snakemake cancels its SLURM jobs and exits (SIGTERM would wait for them to finish)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_snakemake(workdir: Path, args: list[str], env: dict, log_path: Path, timeout: float) -> str:
    """Snakemake in its own process group, so that a run past its time limit, or with a job SLURM can never
    run, can be stopped whole."""
    deadline = time.monotonic() + timeout
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        while proc.poll() is None:
            if time.monotonic() > deadline:
                stop_snakemake(proc)
                pytest.fail(f"snakemake {shlex.join(args)} ran past {timeout} s; log:\n{log_tail(log_path)}")
            stuck = unrunnable_jobs(env)
            if stuck:
                stop_snakemake(proc)
                pytest.fail("SLURM can never run these jobs as submitted (a rule asks for more than the test "
                            "node has: 2 CPUs, 24 GB):\n" + "\n".join(stuck) + f"\nlog:\n{log_tail(log_path)}")
            time.sleep(5)
    if proc.returncode != 0:
        pytest.fail(f"snakemake {shlex.join(args)} failed ({proc.returncode}); log:\n{log_tail(log_path)}")
    return log_path.read_text()


def log_tail(path: Path, lines: int = 80) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_on_slurm(cluster: dict, workdir: Path, args: list[str], profile: Path, timeout: float) -> dict:
    """Dry run, real run through the profile, and the checks of the module docstring. Returns the evidence."""
    env = cluster["env"]
    # as the workflow profile, as profiles/slurm says: nothing of profiles/default (local runs) applies
    profile = ["--workflow-profile", str(profile)]
    planned = parse_jobs(run_snakemake(workdir, [*args, *profile, "--dry-run"], env, workdir / "dryrun.log", 300))
    assert planned, "the dry run lists no job"

    started = time.monotonic()
    log = run_snakemake(
        workdir,
        # a first status check 5 s after submission instead of 40 (each later one 10 s later than the last,
        # back to 5 s whenever a job finished); --verbose logs each sbatch call
        [*args, *profile, "--slurm-init-seconds-before-status-checks", "5", "--verbose", "--slurm-keep-successful-logs"],
        env, workdir / "snakemake.log", timeout,
    )
    seconds = time.monotonic() - started
    profiles_used = re.search(r"^Using .*profiles? .* for setting default command line arguments\.$", log, flags=re.M)
    assert profiles_used and "profiles/default" not in profiles_used[0], profiles_used[0]
    evidence = check_slurm_run(log, planned, env)
    print(f"\n{len(evidence['remote'])} SLURM jobs of run {evidence['run_id']} in {seconds:.0f} s:\n{evidence['listing']}")
    return {**evidence, "seconds": seconds}


def check_slurm_run(log: str, planned: list[dict], env: dict) -> dict:
    """The checks of the module docstring on a finished run's log and the cluster's accounting."""
    run_id = re.search(r"^SLURM run ID: (\S+)$", log, flags=re.M)[1]
    # local jobs from Snakemake's own job blocks, SLURM jobs from their submissions (not every plugin prints blocks)
    ran = [job for job in parse_jobs(log) if job["local"]] + parse_submitted_jobs(log)

    # every planned job ran, each once; only `all` locally
    assert Counter(map(job_key, ran)) == Counter(map(job_key, planned)), "the run's jobs differ from the dry run's"
    assert {job["rule"] for job in ran if job["local"]} <= LOCAL_RULES, "a job ran outside SLURM"
    remote = [job for job in ran if not job["local"]]
    comments = Counter(map(slurm_comment, remote))
    assert max(comments.values()) == 1, f"two jobs share a SLURM comment: {comments.most_common(3)}"

    # one SLURM job per Snakemake job, as submitted
    submitted = dict(
        (int(jobid), slurm_id)
        for jobid, slurm_id in re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", log, flags=re.M)
    )
    assert sorted(submitted) == sorted(job["jobid"] for job in remote)
    assert len(set(submitted.values())) == len(remote), "two Snakemake jobs went into one SLURM job"

    fields = ["JobID", "JobName", "State", "ExitCode", "Partition", "Account", "Comment", "ReqTRES", "AllocTRES"]
    allocations = sacct_rows(env, fields, "-X", "--name", run_id)
    by_comment = {row["Comment"]: row for row in allocations}
    assert len(allocations) == len(remote) == len(by_comment), (
        f"sacct lists {len(allocations)} jobs of run {run_id}, Snakemake submitted {len(remote)}"
    )
    assert set(by_comment) == set(comments)
    assert {row["JobID"] for row in allocations} == set(submitted.values())
    steps = sacct_rows(env, ["JobID", "State", "ExitCode"], "-j", ",".join(sorted(submitted.values())))
    assert len(steps) >= 3 * len(remote), "each job should show its batch step and the srun step"
    assert {(row["State"], row["ExitCode"]) for row in steps} == {("COMPLETED", "0:0")}, steps

    calls = parse_sbatch_calls(log)
    assert set(calls) == set(comments), "the logged sbatch calls differ from the submitted jobs"
    for job in remote:
        comment = slurm_comment(job)
        row, call, res = by_comment[comment], calls[comment], job["resources"]
        what = f"{comment} (sbatch {call}; sacct {row})"
        assert (row["State"], row["ExitCode"], row["JobName"]) == ("COMPLETED", "0:0", run_id), what
        assert row["Partition"] == call["-p"] == env["CLINSUM_SLURM_PARTITION"], what
        assert row["Account"] == call["-A"] == env["CLINSUM_SLURM_ACCOUNT"], what
        assert call["-t"] == res["runtime"], what
        assert call["--mem"] == res["mem_mb"], what
        assert call["--cpus-per-task"] == str(job["threads"]), what
        assert call.get("--gpus") == expected_gpus(job) and "--gres" not in call, what
        assert "--ntasks-per-gpu" not in call, what
        requested = tres(row["ReqTRES"])
        assert (requested["cpu"], requested["mem"]) == (str(job["threads"]), res["mem_mb"]), what
        gpus = int(res.get("gpu", 0))
        assert requested.get("gres/gpu") == (str(gpus) if gpus else None), what
        if res.get("gpu_model") and gpus:
            assert requested.get(f"gres/gpu:{res['gpu_model']}") == str(gpus), what
            assert tres(row["AllocTRES"]).get(f"gres/gpu:{res['gpu_model']}") == str(gpus), what

    listing = "\n".join(
        "  ".join(row[field].ljust(width) for field, width in
                  [("JobID", 6), ("State", 10), ("ExitCode", 5), ("Comment", 44), ("ReqTRES", 0)])
        for row in sorted(allocations, key=lambda row: int(row["JobID"]))
    )
    return {"run_id": run_id, "remote": remote, "allocations": by_comment, "calls": calls, "listing": listing}


# ---------------------------------------------------------------------------------------------------
# The workflows


TOY_SNAKEFILE = textwrap.dedent(
    """
    configfile: "config.yaml"


    rule all:
        input:
            "gathered.txt",


    rule make:
        output:
            "parts/{i}.txt",
        resources:
            mem_mb=500,
            runtime=5,
        shell:
            "echo {wildcards.i} > {output}"


    rule gpu_step:
        input:
            "parts/{i}.txt",
        output:
            "gpu/{i}.txt",
        threads: config["cpus"]
        resources:
            gpu=config["gpu"],
            gpu_model=config["gpu_model"],
            mem_mb=700,
            runtime=7,
        shell:
            "(env | grep -E '^(CUDA_VISIBLE_DEVICES|SLURM_STEP_GPUS)=' || true) > {output}"


    rule gather:
        input:
            expand("gpu/{i}.txt", i=[1, 2]),
        output:
            "gathered.txt",
        shell:
            "cat {input} > {output}"
    """
)


def test_toy_workflow_on_slurm(slurm_cluster, tmp_path):
    """Three rules, one of them on 2 GPUs of a model: the harness and the profile alone, in about a minute."""
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    (tmp_path / "config.yaml").write_text("cpus: 2\ngpu: 2\ngpu_model: t4\n")
    evidence = run_on_slurm(slurm_cluster, tmp_path, [], REPO / "profiles" / "slurm", timeout=300)

    assert sorted(job["rule"] for job in evidence["remote"]) == ["gather", "gpu_step", "gpu_step", "make", "make"]
    gpu_call = evidence["calls"]["rule_gpu_step_wildcards_1"]
    assert (gpu_call["--gpus"], gpu_call["--cpus-per-task"], gpu_call["-t"], gpu_call["--mem"]) == ("t4:2", "2", "7", "700")
    assert "--gpus" not in evidence["calls"]["rule_make_wildcards_1"]
    # the default resources of the profile for a rule that declares none
    assert (evidence["calls"]["rule_gather"]["-t"], evidence["calls"]["rule_gather"]["--mem"]) == ("60", "4000")
    # the job saw the two GPUs SLURM gave it
    assert (tmp_path / "gpu" / "1.txt").read_text().count("CUDA_VISIBLE_DEVICES=") == 1


# teacher on 2 GPUs (its tensor-parallel size on a real cluster), train on 1, infer on 1 T4
GPU_OVERLAY = """\
teacher: {resources: {gpu: 2}}
train: {resources: {gpu: 1}}
infer: {resources: {gpu: 1, gpu_model: t4}}
"""
GPU_RULES = {"teacher": "2", "train": "1", "infer": "t4:1"}


def test_tiny_workflow_on_slurm(slurm_cluster, tmp_path):
    """The real workflow on config/tiny.yaml, every job a SLURM job; its GPU rules ask for GPUs."""
    workdir = tmp_path / "clinsum"
    copy_checkout(workdir)
    (workdir / "slurm-gpus.yaml").write_text(GPU_OVERLAY)
    env = dict(slurm_cluster["env"])
    # the copy's package, not the installed (editable) one, runs in the jobs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "workflow"), env.get("PYTHONPATH")]))
    targets = os.environ.get("CLINSUM_SLURM_TEST_TARGETS", "").split()
    # targets first: --configfile takes every word after it
    args = [*targets, "--configfile", "config/tiny.yaml", "slurm-gpus.yaml"]
    evidence = run_on_slurm({**slurm_cluster, "env": env}, workdir, args, workdir / "profiles" / "slurm", timeout=1800)

    rules = Counter(job["rule"] for job in evidence["remote"])
    if not targets:
        for rule in ("ingest", "split", "teacher", "crop", "train", "infer", "evaluate", "report"):
            assert rules[rule] >= 1, f"no {rule} job ran: {rules}"
        # one SLURM job per teacher shard and language
        tiny = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
        assert rules["teacher"] == len(tiny["languages"]) * tiny["teacher"]["shards"]
    for job in evidence["remote"]:
        assert expected_gpus(job) == GPU_RULES.get(job["rule"]), f"{job['rule']}: {job['resources']}"
