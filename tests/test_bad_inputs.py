"""Every bad input is named: each case runs through the CLI and must end with exit code 2 and
one `error:` line that names the file or config key, leaving no half-written workdir."""

import gzip
import json
import pathlib

import numpy as np
import pytest

from gbmpo_jax import evaluate, train
from gbmpo_jax.models import char_tokenizer
from gbmpo_jax.tasks import data
from gbmpo_jax.workdir import lock

# A one-device smoke run: every case below fails before the first compile.
BASE = ["--exp", "default:smoke", "mesh.num_devices=1", "warmup.steps=0"]


def _gsm8k_dir(tmp: pathlib.Path, bad_line: int) -> pathlib.Path:
    d = tmp / "gsm8k"
    d.mkdir()
    rows = [json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1\n#### {i + 1}"})
            for i in range(20)]  # fmt: skip
    rows[bad_line - 1] = '{"question": "broken", "answer": '
    (d / "train.jsonl").write_text("\n".join(rows) + "\n")
    (d / "test.jsonl").write_text(rows[0] + "\n")
    return d


def _mbpp_without_validation(tmp: pathlib.Path) -> pathlib.Path:
    with gzip.open(data.BUNDLED_DIR / "mbpp/sanitized-mbpp.jsonl.gz", "rt") as f:
        rows = [r for r in map(json.loads, f) if not 511 <= r["task_id"] <= 600]
    p = tmp / "mbpp_no_validation.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _npz(tmp: pathlib.Path, **change) -> pathlib.Path:
    params = {"v": np.full(126, 0.01, np.float32), "w": np.full(126, 0.01, np.float32),
              "b": np.zeros(126, np.float32), "a": np.float32(1.0), "c": np.float32(0.1)}  # fmt: skip
    params.update(change)
    params = {k: v for k, v in params.items() if v is not None}
    p = tmp / "mirror.npz"
    np.savez(p, **params)
    return p


def _corrupt_config_dir(tmp: pathlib.Path) -> pathlib.Path:
    d = tmp / "model"
    char_tokenizer.make().save_pretrained(d)
    (d / "config.json").write_text('{"model_type": "qwen2", ')
    return d


def _mirror(path) -> list[str]:
    return ["objective.divergence=neural_mirror", f"objective.mirror_params_path={path}"]


# (id, build(tmp) -> extra CLI args, substrings the error line must hold)
CASES = [
    (
        "malformed-jsonl",
        lambda t: [
            "task.name=gsm8k",
            f"task.source={_gsm8k_dir(t, 11)}",
            "task.options=",
        ],  # fmt: skip
        ["train.jsonl, line 11", "task.source"],
    ),
    (
        "missing-data-file",
        lambda t: [
            "task.name=gsm8k",
            f"task.source={t}/nope/train.jsonl",
            "task.options=",
        ],  # fmt: skip
        ["nope/train.jsonl", "task.source"],
    ),
    (
        "empty-eval-split",
        lambda t: [
            "task.name=mbpp_sanitized",
            "task.options=",
            f"task.source={_mbpp_without_validation(t)}",
        ],  # fmt: skip
        ["task.eval_split='validation'", "task.eval_size=0"],
    ),
    (
        "empty-gguf",
        lambda t: [
            f"model.path={(t / 'm.gguf').touch() or t / 'm.gguf'}",
            "model.tokenizer=",
        ],  # fmt: skip
        ["m.gguf", "empty", "model.path"],
    ),
    (
        "corrupt-config-json",
        lambda t: [f"model.path={_corrupt_config_dir(t)}", "model.tokenizer="],
        ["model/config.json", "not valid JSON", "model.path"],
    ),
    (
        "mirror-not-a-zip",
        lambda t: _mirror((t / "m.npz").write_text("x") and t / "m.npz"),
        ["objective.mirror_params_path", "m.npz", "not a .npz"],
    ),
    (
        "mirror-missing-key",
        lambda t: _mirror(_npz(t, c=None)),
        ["objective.mirror_params_path", "mirror.npz", "lacks ['c']"],
    ),
    (
        "mirror-negative",
        lambda t: _mirror(_npz(t, v=np.full(126, -1.0, np.float32))),
        ["objective.mirror_params_path", "mirror.npz", "params['v']", "negative"],
    ),
    (
        "mirror-wrong-shape",
        lambda t: _mirror(_npz(t, w=np.ones(5, np.float32))),
        ["objective.mirror_params_path", "mirror.npz", "params['w']", "shape"],
    ),
    ("seed-negative", lambda t: ["run.seed=-1"], ["run.seed"]),
    ("warmup-batch-zero", lambda t: ["warmup.batch_size=0"], ["warmup.batch_size"]),
    ("shape-unknown", lambda t: ["model.random_shape=huge"], ["model.random_shape", "'huge'"]),
    (
        "shape-unknown-dry-run",
        lambda t: ["model.random_shape=huge", "--dry-run"],
        ["model.random_shape"],
    ),
    ("lr-inf", lambda t: ["optim.lr=inf"], ["optim.lr", "finite"]),
    ("lr-absurd", lambda t: ["optim.lr=50"], ["optim.lr"]),
    ("coef-inf", lambda t: ["objective.coef=inf"], ["objective.coef", "finite"]),
    ("coef-nan", lambda t: ["objective.coef=nan"], ["objective.coef", "finite"]),
    ("warmup-lr-nan", lambda t: ["warmup.lr=nan"], ["warmup.lr"]),
    # overrides on both sides of --workdir are all read (the last one is the bad one)
    (
        "overrides-anywhere",
        lambda t: ["run.steps=3", "--workdir", str(t / "wd"), "optim.lr=inf"],
        ["optim.lr"],
    ),
    (
        "workdir-is-a-file",
        lambda t: ["--workdir", str((t / "f").write_text("x") and t / "f")],
        ["--workdir", "/f"],
    ),
]


@pytest.mark.parametrize("build, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_train_cli_names_the_bad_input(build, needles, tmp_path, capsys):
    extra = build(tmp_path)
    workdir = tmp_path / "wd"
    argv = BASE + (["--workdir", str(workdir)] if "--workdir" not in extra else []) + extra
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    assert not workdir.exists()  # nothing half-written is left behind


def test_train_cli_debug_shows_the_traceback(tmp_path, capsys):
    assert train.main([*BASE, "--workdir", str(tmp_path / "wd"), "--debug",
                       f"task.source={tmp_path}/none.jsonl", "task.name=gsm8k"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error:")


def test_train_cli_refuses_a_workdir_in_use(tmp_path, capsys):
    wd = tmp_path / "wd"
    with lock.RunLock(wd):
        assert train.main([*BASE, "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err
    assert "is in use by process" in err and str(wd) in err
    assert not (wd / "error.log").exists()  # the other run's directory is left alone


EVAL_CASES = [
    (
        "model-missing",
        lambda t: ["--model", str(t / "nope"), "--source", "bundled", "--limit", "1"],
        ["--model", "nope"],
    ),
    (
        "hub-offline",
        lambda t: ["--model", "smollm2", "--task", "gsm8k"],
        ["openai/gsm8k", "Offline"],
    ),
    (
        "source-missing",
        lambda t: [
            "--model",
            "smollm2",
            "--task",
            "gsm8k",
            "--source",
            str(t / "x" / "test.jsonl"),
        ],  # fmt: skip
        ["x/test.jsonl", "--source"],
    ),
]


@pytest.mark.parametrize("build, needles", [c[1:] for c in EVAL_CASES],
                         ids=[c[0] for c in EVAL_CASES])  # fmt: skip
def test_evaluate_cli_names_the_bad_input(build, needles, tmp_path, capsys):
    assert evaluate.main([*build(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error:")
    for needle in needles:
        assert needle in line, (needle, line)


def test_evaluate_never_overwrites_a_result(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert evaluate.main(["--model", "unused", "--out", str(out), "--no-progress"]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "{}"
    first = evaluate.make_output_dir(evaluate.fresh_output_dir("", tmp_path / "eval_x"))
    assert first == tmp_path / "eval_x"  # the default name, while it is free
    assert evaluate.fresh_output_dir("", tmp_path / "eval_x") == tmp_path / "eval_x-2"


def test_eval_size_zero_is_an_explicit_logged_choice(tmp_path):
    """The same empty validation split trains when evaluation is switched off, and says so."""
    from gbmpo_jax import config, experiment
    from gbmpo_jax.workdir import metrics

    cfg = config.override(experiment.load("default:smoke"), **{
        "mesh.num_devices": 1, "warmup.steps": 0, "task.name": "mbpp_sanitized",
        "task.options": (), "task.source": str(_mbpp_without_validation(tmp_path)),
        "task.eval_size": 0, "run.steps": 0, "run.export": False,
    })  # fmt: skip
    logs = []
    out = train.run(cfg, tmp_path / "wd", log=logs.append)
    assert any(m.startswith("task.eval_size=0: this run has no held-out evaluation") for m in logs)
    assert out["first_eval"] == {} and out["step"] == 0
    recs = metrics.read_jsonl(tmp_path / "wd" / "metrics.jsonl")
    assert not any("eval/accuracy" in r for r in recs)
