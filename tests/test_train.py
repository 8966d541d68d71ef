"""End-to-end training: every experiment's smoke variant, exact resume, SIGTERM, config guard."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gbmpo_jax import config as C
from gbmpo_jax import experiment, train
from gbmpo_jax.workdir import checkpoint, metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
ONE_DEVICE = {"mesh.num_devices": 1}


@pytest.mark.parametrize("name", experiment.names())
def test_smoke_variant_trains_two_steps(name, tmp_path):
    # One device keeps compiles cheap; `default` also runs on a (data=2, fsdp=2) mesh of the
    # simulated CPU devices, so the sharded rollout / update path runs end to end too.
    mesh = (
        {"mesh.num_devices": 4, "mesh.data": 2, "mesh.fsdp": 2}
        if name == "default"
        else {"mesh.num_devices": 1}
    )
    cfg = C.override(experiment.load(name + ":smoke"), **mesh)
    summary = train.run(cfg, tmp_path, log=lambda *_: None)
    assert summary["step"] == 2
    recs = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r["step"] for r in recs if "train/loss" in r]
    assert steps == [1, 2]
    for r in recs:
        if "train/loss" in r:
            # untrained models rarely stop, so truncated rows may mask every token out
            assert r["rollout/length_mean"] > 0 and r["train/tokens"] >= 0
            assert r["train/skipped_steps"] == 0 and "div/mean" in r
            assert all(v == v for v in r.values() if isinstance(v, float))  # no NaN
    assert (tmp_path / "export" / "config.json").is_file()
    assert (tmp_path / "curves.png").is_file() and (tmp_path / train.DONE_MARKER).is_file()
    assert json.loads((tmp_path / "config.json").read_text())["name"] == cfg.name


def _cmd(workdir, steps):
    return [sys.executable, "-m", "gbmpo_jax.train", "--exp", "default:smoke",
            "--workdir", str(workdir), f"run.steps={steps}", "rollout.max_new_tokens=6"]  # fmt: skip


def _env(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS="")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _wait_for_step(proc, path, step, timeout=240):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and any(r.get("step", 0) >= step and "train/loss" in r
                                 for r in metrics.read_jsonl(path)):  # fmt: skip
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _trajectory(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in metrics.read_jsonl(workdir / "metrics.jsonl")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.essential
def test_sigterm_and_sigkill_resume_is_bit_identical(tmp_path):
    env, steps = _env(tmp_path), 5
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, steps), env=env, cwd=REPO, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    run = tmp_path / "run"
    # 1. SIGTERM (preemption) after step 1: saves the step in flight and exits 0.
    p = subprocess.Popen(_cmd(run, steps), env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    _wait_for_step(p, run / "metrics.jsonl", 1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0
    term_step = max(r["step"] for r in metrics.read_jsonl(run / "metrics.jsonl"))
    assert checkpoint.Checkpointer(run / "checkpoints").latest_step() == term_step < steps
    # 2. Resume, then SIGKILL at an arbitrary point after the next step.
    p = subprocess.Popen(_cmd(run, steps), env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    _wait_for_step(p, run / "metrics.jsonl", term_step + 1)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    # 3. Resume to the end: the trajectory equals the uninterrupted one, value for value.
    subprocess.run(_cmd(run, steps), env=env, cwd=REPO, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    assert _trajectory(run) == _trajectory(ref)
    assert (run / train.DONE_MARKER).is_file()


def test_resume_refuses_a_different_config(tmp_path):
    cfg = C.override(
        experiment.load("default:smoke"), **{"run.steps": 1, "run.export": False, **ONE_DEVICE}
    )
    train.run(cfg, tmp_path, log=lambda *_: None)
    other = C.override(cfg, **{"optim.lr": 0.5, "objective.coef": 0.2})
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"objective\.coef.*\n.*optim\.lr"):
        train.run(other, tmp_path, log=lambda *_: None)
    # fields that do not change the trajectory may differ (e.g. more steps, logging)
    saved = json.loads((tmp_path / "config.json").read_text())
    checkpoint.check_compatible(saved, C.override(cfg, **{"run.steps": 9, "run.log_every": 3}))
    # A run killed after its step-0 checkpoint but before step 1's resumes from step 0
    # (it must not try to save step 0 a second time).
    shutil.rmtree(tmp_path / "checkpoints" / "1")
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 0
    assert train.run(cfg, tmp_path, log=lambda *_: None)["step"] == 1


def test_cli_errors_and_dry_run(capsys, tmp_path):
    assert train.main(["--exp", "nope"]) == 2
    assert "valid names" in capsys.readouterr().err
    assert train.main(["--exp", "default", "optim.nosuch=1"]) == 2
    assert "unknown config key 'optim.nosuch'" in capsys.readouterr().err
    assert train.main(["--exp", "default", "--workdir", str(tmp_path), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["name"] == "default"
    assert out["memory_per_device"]["num_params"] > 0
    assert not (tmp_path / "checkpoints").exists()  # a dry run writes nothing


def test_default_workdir_resumes_the_unfinished_run_only(tmp_path):
    old = tmp_path / "20260101-000000_default"
    (old / "checkpoints").mkdir(parents=True)
    assert train.default_workdir("default", root=tmp_path) == old  # unfinished: resumed
    (old / train.DONE_MARKER).write_text("{}")
    new = train.default_workdir("default", root=tmp_path)
    assert new != old and new.name.endswith("_default")  # finished: a fresh run
    assert train.default_workdir("default:smoke", root=tmp_path).name.endswith("_default-smoke")
