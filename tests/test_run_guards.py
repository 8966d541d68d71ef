"""End to end on the smoke model: SIGTERM in the warm-up saves and resumes bit-identically, a
corrupted newest checkpoint falls back to the previous step, a re-run after deleting the
checkpoints starts a fresh record, and `evaluate` on the run directory scores as the run did."""

import json
import os
import shutil
import signal

import pytest

from gbmpo_jax import config as C
from gbmpo_jax import evaluate, experiment, train
from gbmpo_jax.tasks import episodes
from gbmpo_jax.workdir import checkpoint, metrics

OVERRIDES = {
    "mesh.num_devices": 1,
    "warmup.steps": 4,
    "warmup.batch_size": 4,
    "run.steps": 2,
    "rollout.max_new_tokens": 6,
    "task.eval_size": 5,
}


def _cfg():
    return C.override(experiment.load("default:smoke"), **OVERRIDES)


def _trajectory(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in metrics.read_jsonl(workdir / "metrics.jsonl")]  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run (warm-up, 2 RL steps, evaluation at 0 and 2, export)."""
    wd = tmp_path_factory.mktemp("ref") / "run"
    train.run(_cfg(), wd, log=lambda *_: None)
    return wd


@pytest.mark.slow
@pytest.mark.essential  # ~2 min on a 2-core CPU: the only end-to-end proof of these guards
def test_interruptions_and_damage_leave_the_trajectory_unchanged(reference_run, tmp_path):
    ref = _trajectory(reference_run)
    cfg = C.override(_cfg(), **{"run.export": False})
    wd = tmp_path / "run"
    logs = []

    def term_in_warmup(msg):
        logs.append(msg)
        if msg.startswith("warm-up 2/4"):
            os.kill(os.getpid(), signal.SIGTERM)

    # 1. SIGTERM during the warm-up: the warm-up state is saved and the run returns cleanly
    out = train.run(cfg, wd, log=term_in_warmup)
    assert out["warmup_interrupted"] and out["step"] == 0
    assert any("SIGTERM: saved warm-up step 2/4" in m for m in logs)
    assert checkpoint.verify(wd / train.WARMUP_CKPT / "2") is None
    assert not any((wd / "checkpoints").glob("[0-9]*")) and not (wd / ".lock").exists()
    # 2. the re-run continues the warm-up from step 2 and matches the uninterrupted run
    logs.clear()
    train.run(cfg, wd, log=logs.append)
    assert "warm-up: resumed at step 2/4" in logs
    assert _trajectory(wd) == ref
    assert not (wd / train.WARMUP_CKPT).exists()
    # 3. flipped bytes in the newest checkpoint: named, moved aside, step 1 is used instead
    arrays = [p for p in (wd / "checkpoints" / "2" / "state").rglob("*") if "/d/" in str(p)]
    f = max(arrays, key=lambda p: p.stat().st_size)
    raw = bytearray(f.read_bytes())
    raw[-80:-16] = bytes(b ^ 0x5A for b in raw[-80:-16])
    f.write_bytes(bytes(raw))
    (wd / train.DONE_MARKER).unlink()
    logs.clear()
    train.run(cfg, wd, log=logs.append)
    assert any("checkpoint step 2 failed verification" in m and "checksum" in m for m in logs)
    assert f"resumed from step 1 in {wd}" in logs
    assert (wd / "checkpoints_rejected" / "2").is_dir()
    assert _trajectory(wd) == ref
    # 4. checkpoints deleted by hand: a fresh run, whose record replaces the old one
    shutil.rmtree(wd / "checkpoints")
    train.run(cfg, wd, log=lambda *_: None)
    assert _trajectory(wd) == ref


@pytest.mark.slow
@pytest.mark.essential  # ~15 s beyond the shared reference run
def test_evaluate_on_the_run_dir_scores_as_the_run_did(reference_run):
    cfg = _cfg()
    last = [r for r in metrics.read_jsonl(reference_run / "metrics.jsonl") if "eval/accuracy" in r]
    last = last[-1]
    args = evaluate._parser().parse_args(["--model", str(reference_run), "--no-progress"])
    s = evaluate.run(args)  # the export (its tokenizer must encode as training did)
    assert s["policy"] == "export" and s["split"] == cfg.task.eval_split
    assert s["max_new_tokens"] == cfg.rollout.max_new_tokens != evaluate.DEFAULTS["max_new_tokens"]
    assert s["options"] == dict(cfg.task.options) and s["n_examples"] == cfg.task.eval_size
    for k in ("accuracy", "mean_reward", "mean_completion_chars"):
        assert s[k] == last[f"eval/{k}"], k
    held = episodes.TrainData.from_config(cfg).eval_examples
    out1 = reference_run / "evals" / os.path.basename(s["out"])
    recs1 = [json.loads(x) for x in (out1 / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs1] == [e.id for e in held]  # the run's held-out subset
    # Without the export the newest verified checkpoint is evaluated: identical completions,
    # written to a new directory (the first result is kept).
    shutil.move(reference_run / "export", reference_run / "export.away")
    try:
        s2 = evaluate.run(args)
    finally:
        shutil.move(reference_run / "export.away", reference_run / "export")
    assert s2["policy"] == "checkpoint" and s2["out"] != s["out"]
    recs2 = [json.loads(x) for x in (reference_run / "evals" / os.path.basename(s2["out"]) /
                                     "records.jsonl").read_text().splitlines()]  # fmt: skip
    assert [r["completions"] for r in recs2] == [r["completions"] for r in recs1]
    assert (out1 / "summary.json").is_file()
