"""The benchmark harness: `python -m bench.run --quick` runs and prints the documented JSON;
FLOP counts match the model's parameters; the log row and section selection behave."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from bench import common, run

from gbmpo_jax import models
from gbmpo_jax.models import presets

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_matmul_params_match_the_initialised_model():
    for shape in ("tiny", "3M"):
        cfg = presets.model_config(shape, 64)
        p = jax.eval_shape(lambda c=cfg: models.init_model(c, jax.random.key(0)).params)
        lay = p["layers"]
        n = sum(lay[k].size for k in ("q", "k", "v", "o", "gate", "up", "down"))
        assert common.matmul_params(cfg) == n + p["lm_head"].size


def test_flop_model_by_hand():
    cfg = presets.model_config("tiny", 64)  # E=32, L=2, H=4, Hkv=2, D=8, F=64, V=64
    m = 2 * (32 * 8 * 8 + 4 * 8 * 32 + 3 * 32 * 64) + 32 * 64
    assert common.matmul_params(cfg) == m
    # 1 row of 3 tokens: 3 * 2m + attention over contexts 1 + 2 + 3
    assert common.seq_forward_flops(cfg, 1, 3) == 3 * 2 * m + 4 * 2 * 4 * 8 * 6
    # 1 prompt of 2 tokens, G=2, 1 new token: prefill once, decode each row at context 3
    want = 2 * 2 * m + 4 * 2 * 4 * 8 * 3 + 2 * (2 * m + 4 * 2 * 4 * 8 * 3)
    assert common.rollout_flops(cfg, 2, 1, 2, 1) == want
    # log-prob pass, 1 prompt of 2 tokens once, G=2 rows of 1 completion token: trunk on
    # 2 + 2 tokens, head (32 x 64) on the 2 completion tokens, attention 1 + 2 (prompt) and
    # 3 per completion token
    head, trunk = 32 * 64, m - 32 * 64
    want = 2 * trunk * 4 + 2 * head * 2 + 4 * 2 * 4 * 8 * (3 + 2 * 3)
    assert common.logprob_forward_flops(cfg, 1, 2, 2, 1) == want


def test_stats_and_bad_input():
    s = common.stats([2.0, 1.0, 4.0])
    assert s == {"median": 2.0, "min": 1.0, "max": 4.0, "spread": 1.5, "n": 3}
    with pytest.raises(ValueError, match="at least one"):
        common.stats([])


def test_sections_selection():
    assert run.parse_sections(None) == list(run.SECTIONS)
    assert run.parse_sections("step, rewards") == ["step", "rewards"]
    with pytest.raises(ValueError, match="unknown \\['nope'\\]"):
        run.parse_sections("step,nope")


def test_optional_section_missing_is_reported(monkeypatch):
    def fake_import(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(run.importlib, "import_module", fake_import)
    assert run.run_section("es", True)["status"] == "missing"
    with pytest.raises(ModuleNotFoundError):  # a required section must not go silently missing
        run.run_section("step", True)


def test_failing_section_is_an_error_not_a_crash(monkeypatch):
    class Boom:
        @staticmethod
        def run(quick):
            raise RuntimeError("broken bench")

    monkeypatch.setattr(run.importlib, "import_module", lambda name: Boom)
    out = run.run_section("rewards", True)
    assert out["status"] == "error" and "broken bench" in out["error"]


def test_section_that_does_not_import_is_an_error(monkeypatch):
    def half_edited(name):
        raise ImportError("cannot import name 'x' from 'gbmpo_jax.models.transformer'")

    monkeypatch.setattr(run.importlib, "import_module", half_edited)
    out = run.run_section("sampling", True)
    assert out["status"] == "error" and "ImportError" in out["error"]


def test_record_appends_one_row(tmp_path):
    log = tmp_path / "BENCHMARKS.md"
    log.write_text("| a |\n| --- |\n")
    sections = {"es": {"status": "missing", "wall_s": 0.0}}
    doc = {
        "machine": {"date_utc": "2026-01-01 00:00", "host": "h", "cpu_count": 2,
                    "load_avg_1_5_15": [1.0, 1.0, 1.0], "commit": "abc", "jax": "0.10.2",
                    "torch": "2", "trl": "1"},
        "sections": sections, "summary": run.summarize(sections),
        "peak_rss_mb": {"self": 10.0, "children": 20.0},
    }  # fmt: skip
    run.record(doc, log)
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and lines[2].startswith("| 2026-01-01 00:00 | h 2 cores")
    assert "es: missing" in lines[2]
    with pytest.raises(FileNotFoundError, match="Log table"):
        run.record(doc, tmp_path / "absent.md")


def _check_phase(p):
    assert p["first_s"] > 0 and p["compile_s"] >= 0
    st = p["steady_s"]
    assert 0 < st["min"] <= st["median"] <= st["max"] and st["n"] >= 2
    assert p["tokens_per_s"] > 0 and 0 < p["fraction_of_matmul_peak"] < 1.5


@pytest.mark.slow
@pytest.mark.essential
def test_quick_run_prints_the_documented_json(tmp_path):
    """`python -m bench.run --quick --sections step` (the sampling, rewards and es modules have
    their owners' tests): exit 0, one JSON document on stdout, nothing recorded."""
    before = (ROOT / "BENCHMARKS.md").read_text() if (ROOT / "BENCHMARKS.md").exists() else None
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as `make bench` runs
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--sections", "step", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["schema"] == run.SCHEMA and doc["quick"] is True
    m = doc["machine"]
    for k in ("date_utc", "commit", "jax", "cpu_count", "load_avg_1_5_15"):
        assert m[k] not in (None, "")
    assert set(doc["sections"]) == {"step"}
    step = doc["sections"]["step"]
    assert step["status"] == "ok", step
    (case,) = step["result"]["cases"]
    assert case["shape"] == "tiny" and "trl" not in case
    ours = case["ours"]
    for name in ("rollout", "logprobs", "update"):
        _check_phase(ours["phases"][name])
    _check_phase(ours["step"])
    parts = sum(ours["step_breakdown_median_s"].values())
    assert parts <= ours["step"]["steady_s"]["max"] * 1.01
    assert ours["peak_rss_mb"] > 50
    warm = ours["warm_cache"]  # the second process, reading the first one's executables
    assert warm["peak_rss_mb"] > 50 and warm["first_step_s"] > 0 and warm["step_s"] > 0
    s = doc["summary"]["step_tiny"]
    assert s["ours_step_s"] == ours["step"]["steady_s"]["median"]
    assert doc["peak_rss_mb"]["children"] >= ours["peak_rss_mb"]
    after = (ROOT / "BENCHMARKS.md").read_text() if (ROOT / "BENCHMARKS.md").exists() else None
    assert after == before  # quick runs never record
