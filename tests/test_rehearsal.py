"""`:rehearsal` variants: each paper experiment's accelerator path (bf16 + float32 master
weights, remat, LoRA, micro-batches, the real Qwen3 tokenizer and chat template, sampler,
bundled data, sandbox, final test evaluation) on a tiny random Qwen3-shaped model.

CI runs one GSM8K and one MBPP rehearsal (slow + essential); `make test-all` all six."""

import json
import math

import pytest

from gbmpo_jax import config as C
from gbmpo_jax import experiment, train
from gbmpo_jax.workdir import metrics

PAPER = [f"{t}_{d}" for t in ("gsm8k", "mbpp") for d in ("drgrpo", "probl2", "neural_mirror")]
CI = ["gsm8k_drgrpo", "mbpp_probl2"]

# What a rehearsal may change; everything else must equal the real run's config.
SHRUNK = {
    "name", "model.path", "model.random_shape", "model.tokenizer", "task.name", "task.source",
    "task.eval_size", "task.final_eval_size", "rollout.group_size", "rollout.max_new_tokens",
    "rollout.min_new_tokens", "run.steps", "run.eval_every", "run.samples_to_log",
}  # fmt: skip


@pytest.mark.parametrize("name", PAPER)
def test_rehearsal_differs_from_the_real_run_only_in_size(name):
    real = experiment.load(name)
    reh = C.validate(experiment.load(name + ":rehearsal"))
    changed = set(C.diff(real, reh))
    assert changed <= SHRUNK, sorted(changed - SHRUNK)
    assert reh.model.dtype == "bfloat16" and reh.model.remat
    assert reh.model.random_shape == "qwen3-tiny" and reh.model.tokenizer.endswith(
        "qwen3-tokenizer"
    )
    assert reh.task.source == "bundled" and reh.task.final_eval_split == "test"
    rows = reh.rollout.prompts_per_step * reh.rollout.group_size
    assert rows % reh.objective.micro_batches == 0


def _rehearse(name, tmp_path):
    cfg = C.override(experiment.load(name + ":rehearsal"), **{"mesh.num_devices": 1})
    lines = []
    summary = train.run(cfg, tmp_path, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert summary["step"] == cfg.run.steps == 2
    recs = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["train/skipped_steps"] == 0
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    final = summary["final_eval"]
    assert final["final/test_problems"] == 2 and 0 <= final["final/test_accuracy"] <= 1
    assert any(line.startswith("final evaluation:") for line in lines)
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["model_type"] == "qwen3" and exported["vocab_size"] == 151_669
    samples = [r for r in recs if "rollout/length_mean" in r]
    assert samples and all(r["rollout/length_mean"] >= 1 for r in samples)


@pytest.mark.slow
@pytest.mark.essential
@pytest.mark.parametrize("name", CI)
def test_rehearsal_runs_in_ci(name, qwen3_tokenizer_dir, tmp_path):
    _rehearse(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PAPER if n not in CI])
def test_rehearsal_runs(name, qwen3_tokenizer_dir, tmp_path):
    _rehearse(name, tmp_path)


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_with_the_tiny_shape(qwen3_tokenizer_dir, tmp_path):
    from bench import gpu_check

    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--tiny", "--rehearsals", "", "--steps", "2", "--out", str(out),
                         "--workdir", str(tmp_path / "runs")])  # fmt: skip
    doc = json.loads(out.read_text())
    t = doc["timing"]
    assert rc == 0 and t["ok"] and t["loss_finite"] and t["trainable_dtypes"] == ["float32"]
    assert t["weights_changed_frac"] >= 0.99 and t["vocab"] == 151_669
    assert set(t["steady"]) >= {"rollout_s", "update_s", "update_mfu"}


def test_a_missing_qwen3_tokenizer_names_the_field_and_the_fix(tmp_path):
    from gbmpo_jax import policy

    cfg = C.override(experiment.load("gsm8k_drgrpo:rehearsal"),
                     **{"model.tokenizer": str(tmp_path / "qwen3-tokenizer")})  # fmt: skip
    with pytest.raises(C.ConfigError, match=r"model\.tokenizer=.*make qwen3-tokenizer"):
        policy.load_tokenizer(cfg)
