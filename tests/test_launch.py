"""launch/: the dry runs print the exact gcloud / srun commands; shellcheck is clean."""

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
POD = REPO / "launch" / "tpu" / "pod.sh"
SBATCH = REPO / "launch" / "gpu" / "slurm.sbatch"
SCRIPTS = [REPO / "launch" / "common.sh", POD, SBATCH]


def sh(args, env=None, ok=True):
    env = {**os.environ, "PATH": os.environ["PATH"], **(env or {})}
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30, cwd=REPO)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def commands(out: str) -> list[list[str]]:
    """The '+ '-prefixed dry-run lines, split back into argv lists."""
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def test_tpu_up_dry_run_creates_installs_and_trains_on_all_workers():
    r = sh([
        "bash", str(POD), "--dry-run", "up", "--name", "rl1", "--zone", "us-east5-a",
        "--accelerator-type", "v5litepod-16", "--runtime-version", "v2-alpha-tpuv5-lite",
        "--spot", "--project", "proj", "--bucket", "gs://bkt/runs", "--exp", "gsm8k_drgrpo",
        "--args", "mesh.fsdp=4 run.steps=300",
    ])  # fmt: skip
    create, setup, train = commands(r.stdout)
    assert create[:7] == ["gcloud", "--project=proj", "compute", "tpus", "tpu-vm", "create", "rl1"]
    for flag in ("--zone=us-east5-a", "--accelerator-type=v5litepod-16", "--spot",
                 "--version=v2-alpha-tpuv5-lite"):  # fmt: skip
        assert flag in create
    for c in (setup, train):
        assert c[5:7] == ["ssh", "rl1"] and "--worker=all" in c and "--zone=us-east5-a" in c
    setup_cmd = setup[-1].removeprefix("--command=")
    assert "make install" in setup_cmd and "jax[tpu]==" in setup_cmd
    assert "gcsfuse --implicit-dirs --only-dir runs bkt /mnt/gcs" in setup_cmd
    train_cmd = train[-1].removeprefix("--command=")
    assert "make train EXP=gsm8k_drgrpo" in train_cmd
    assert (
        "ARGS='--workdir /mnt/gcs/runs/rl1-gsm8k_drgrpo mesh.coordinator=auto "
        "mesh.fsdp=4 run.steps=300'" in train_cmd
    )


def test_tpu_queued_preemptible_watch_recreates_and_resumes():
    r = sh(["bash", str(POD), "watch", "--queued", "--preemptible", "--once",
            "--workdir", "/nfs/runs/a"], env={"DRY_RUN": "1", "TPU_NAME": "q1"})  # fmt: skip
    cmds = commands(r.stdout)
    verbs = [(c[3], c[4]) for c in cmds]
    assert verbs == [
        ("queued-resources", "describe"),
        ("queued-resources", "delete"),
        ("queued-resources", "create"),
        ("tpu-vm", "ssh"),  # install
        ("tpu-vm", "ssh"),  # relaunch: resumes from the workdir
    ]
    create = cmds[2]
    assert "--node-id=q1" in create and "--best-effort" in create
    assert "--runtime-version=tpu-ubuntu2204-base" in create
    assert "--workdir /nfs/runs/a" in cmds[-1][-1]
    assert "recreating and resuming" in r.stderr


def test_tpu_delete_logs_and_errors():
    out = sh(["bash", str(POD), "--dry-run", "delete", "--name", "x"]).stdout
    assert commands(out) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "x", "--zone=us-central2-b", "--quiet"]
    ]
    logs = commands(sh(["bash", str(POD), "--dry-run", "logs"]).stdout)[0]
    assert "--worker=0" in logs and "tail -n 100 -f ~/train.log" in logs[-1]
    r = sh(["bash", str(POD), "--dry-run", "train"], ok=False)
    assert r.returncode == 2 and "--bucket" in r.stderr  # no persistent workdir
    r = sh(["bash", str(POD), "--dry-run", "create", "--spot", "--preemptible"], ok=False)
    assert r.returncode == 2 and "exclusive" in r.stderr
    r = sh(["bash", str(POD), "--dry-run", "launch"], ok=False)
    assert r.returncode == 2 and "unknown argument 'launch'" in r.stderr


def test_slurm_dry_run_prints_srun():
    env = {"DRY_RUN": "1", "HEAD_NODE": "gpu001", "SLURM_NNODES": "4", "EXP": "mbpp_drgrpo",
           "WORKDIR": "/shared/runs/m", "REPO_DIR": str(REPO)}  # fmt: skip
    (cmd,) = commands(sh(["bash", str(SBATCH)], env=env).stdout)
    assert cmd[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert cmd[7:] == [str(REPO), "mbpp_drgrpo", "/shared/runs/m", "gpu001:8476", "4", ""]


def test_slurm_tasks_get_their_process_ids(tmp_path):
    """Runs the script for real with fake `srun` (two tasks) and `make` (echo): each task
    passes its own SLURM_PROCID as mesh.process_id and the head node as coordinator."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for i in 0 1; do SLURM_PROCID=$i "$@"; done\n'
    )
    (bin_ / "make").write_text('#!/usr/bin/env bash\nprintf "%s|" "$@"; echo\n')
    (bin_ / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node7\\nnode8\\n'\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST":
           "node[7-8]", "REPO_DIR": str(REPO), "TRAIN_ARGS": "mesh.fsdp=8"}  # fmt: skip
    lines = sh(["bash", str(SBATCH)], env=env).stdout.splitlines()
    for i, line in enumerate(lines):
        args = line.rstrip("|").split("|")
        assert args[:4] == ["-C", str(REPO), "train", "EXP=default"]
        assert args[4] == (
            f"ARGS=--workdir {REPO}/runs/slurm-default mesh.coordinator=node7:8476 "
            f"mesh.num_processes=2 mesh.process_id={i} mesh.fsdp=8"
        )
    assert len(lines) == 2


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run(
        ["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, r.stdout + r.stderr
