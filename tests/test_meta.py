"""The ES outer loop (gbmpo_jax.meta): synthetic-fitness optimisation, resume, CLI, compare."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import config as C
from gbmpo_jax import divergences, es, meta, metrics, policy, population

REF = jax.device_get(divergences.reference_init())
LOG_TARGET = {k: np.log(2 * np.maximum(np.asarray(REF[k]), es.MIN_COEF)) for k in es.KEYS}


def synthetic_fitness(programs, mode, div_params, steps):
    """No LLM: the best map doubles a, c and the mean of v (log scale); maximum 0."""
    g = lambda k: jnp.log(div_params[k] + 1e-12)  # noqa: E731
    f = -(
        (g("a") - LOG_TARGET["a"]) ** 2
        + (g("c") - LOG_TARGET["c"]) ** 2
        + (jnp.mean(g("v"), -1) - LOG_TARGET["v"].mean()) ** 2
    )
    f = np.asarray(f, np.float32)
    return population.InnerResult(f, {"eval/mean_length": np.zeros_like(f)})


@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setattr(population, "run_population", synthetic_fitness)


def _cfgs(**meta_kw):
    cfg, mcfg = meta.load("arith_es_meta:smoke")
    return cfg, C.override(mcfg, **{"eval_mean": True, **meta_kw})


STRATEGY_KW = {
    "open_es": dict(sigma=0.3, lr=0.05),
    "snes": dict(sigma=0.3, lr=1.0),
    "cma_es": dict(sigma=0.3),
    "paper": dict(sigma=0.3, lr=0.5, sigma_decay=0.99),
}


@pytest.mark.parametrize("name", sorted(es.STRATEGIES))
def test_es_loop_improves_a_synthetic_fitness(name, synthetic, tmp_path):
    cfg, mcfg = _cfgs(strategy=name, generations=10, **STRATEGY_KW[name])
    meta.run(cfg, mcfg, tmp_path, log=lambda *_: None)
    recs = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    first, last = recs[0]["es/mean_fitness"], recs[-1]["es/mean_fitness"]
    assert first == pytest.approx(-1.441, abs=0.01)  # the reference map, before any step
    assert last > 0.75 * first, (name, first, last)  # closes >= 25% of the gap in 10 generations
    assert recs[-1]["es/fitness_best"] >= max(r["es/fitness_max"] for r in recs) - 1e-6
    for k in ("es/fitness_mean", "es/fitness_std", "es/fitness_min", "es/sigma",
              "es/update_norm", "es/member_fitness/7"):  # fmt: skip
        assert k in recs[-1]
    best = policy.load_mirror_params(str(tmp_path / "mirror_best.npz"))  # validated, >= 0
    assert set(best) == set(es.KEYS)
    assert (tmp_path / "es_curve.png").is_file() and (tmp_path / "mirror_slope.png").is_file()


def test_resume_mid_es_repeats_the_uninterrupted_run(synthetic, tmp_path):
    cfg, mcfg = _cfgs(generations=4)
    meta.run(cfg, mcfg, tmp_path / "a", log=lambda *_: None)
    meta.run(cfg, C.override(mcfg, generations=2), tmp_path / "b", log=lambda *_: None)
    logs = []
    meta.run(cfg, mcfg, tmp_path / "b", log=logs.append)
    assert any("resumed ES from generation 2" in m for m in logs)
    a = metrics.read_jsonl(tmp_path / "a" / "metrics.jsonl")
    b = metrics.read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    for f in ("mirror_best.npz", "mirror_mean.npz"):
        za, zb = np.load(tmp_path / "a" / f), np.load(tmp_path / "b" / f)
        for k in es.KEYS:
            np.testing.assert_array_equal(za[k], zb[k])


def test_resume_refuses_a_different_meta_config(synthetic, tmp_path):
    cfg, mcfg = _cfgs(generations=1)
    meta.run(cfg, mcfg, tmp_path, log=lambda *_: None)
    with pytest.raises(Exception, match="meta.sigma"):
        meta.run(cfg, C.override(mcfg, generations=2, sigma=0.5), tmp_path, log=lambda *_: None)


def test_cli_errors_name_the_field(tmp_path, capsys):
    wd = ["--workdir", str(tmp_path)]
    assert meta.main(["--exp", "arith_es_meta:smoke", *wd, "meta.pop_size=7"]) == 2
    assert "meta.pop_size" in capsys.readouterr().err
    assert meta.main(["--exp", "arith_es_meta:smoke", *wd, "meta.strategy=adam"]) == 2
    assert "meta.strategy" in capsys.readouterr().err
    assert meta.main(["--exp", "arith_es_meta:smoke", *wd, "objective.divergence=kl"]) == 2
    assert "objective.divergence" in capsys.readouterr().err
    assert meta.main(["--exp", "arith_es_meta:smoke", *wd, "task.eval_split=test"]) == 2
    assert "test split" in capsys.readouterr().err
    assert meta.main(["--exp", "default", *wd]) == 2
    assert "get_meta_config" in capsys.readouterr().err


def test_compare_runs_four_arms_over_seeds_on_test(monkeypatch, tmp_path):
    from gbmpo_jax import train

    seen = []

    def fake_run(cfg, workdir, log=print):
        seen.append(cfg)
        acc = {"kl": 0.2, "prob_l2": 0.4, "neural_mirror": 0.3}[cfg.objective.divergence]
        acc += 0.1 * bool(cfg.objective.mirror_params_path) + 0.01 * cfg.run.seed
        return {"final_eval": {"final/test_accuracy": acc, "final/test_problems": 7,
                               "final/test_mean_completion_chars": 10.0}}  # fmt: skip

    monkeypatch.setattr(train, "run", fake_run)
    cfg, mcfg = meta.load("arith_es_meta:smoke")
    rows = meta.compare(cfg, mcfg, tmp_path / "m.npz", 2, tmp_path, log=lambda *_: None)
    assert len(seen) == 8 and all(c.task.eval_split == "test" for c in seen)
    # the paper's protocol: the whole test split at the end, trained on the full train split
    assert all(c.task.final_eval_split == "test" and c.task.final_eval_size == 0 for c in seen)
    assert all(c.task.train_split == "train" and c.run.steps == cfg.run.steps for c in seen)
    assert [c.objective.coef for c in seen[:4:2]] == [0.04, 0.1]
    assert seen[4].objective.divergence == "neural_mirror"
    assert seen[4].objective.mirror_init == cfg.objective.mirror_init
    assert not seen[4].objective.mirror_params_path
    assert seen[6].objective.mirror_params_path == str(tmp_path / "m.npz")
    by = {r["method"]: r for r in rows}
    assert by["neural mirror (ES)"]["acc_mean"] == pytest.approx(0.405)
    assert by["ProbL2"]["acc_std"] == pytest.approx(0.005)
    table = meta.es_report.table(rows)
    assert "| neural mirror (ES) | 40.5 ± 0.5 | 10.0 | 2 | 7 |" in table


def test_compare_defaults_to_the_paper_length_for_paper_es_experiments():
    for name, steps in (("gsm8k_es_meta", 1000), ("mbpp_es_meta", 1600)):
        cfg, mcfg = meta.load(name)
        assert mcfg.compare_steps == steps and cfg.run.steps == 100  # inner T stays 100
        # ES itself never sees test: inner runs on inner_train, fitness on validation
        assert (cfg.task.train_split, cfg.task.eval_split) == ("inner_train", "validation")
        meta.validate_inner(cfg)


# ------------------------------------------------------------------ real inner runs (tiny LLM)
@pytest.mark.slow
@pytest.mark.essential
def test_smoke_demo_cli(tmp_path):
    assert meta.main(["--exp", "arith_es_meta:smoke", "--workdir", str(tmp_path)]) == 0
    recs = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2]
    assert all(0.0 <= r[f"es/member_fitness/{i}"] <= 1.0 for r in recs for i in range(8))
    done = json.loads((tmp_path / meta.DONE_MARKER).read_text())
    assert done["generations"] == 2
    policy.load_mirror_params(str(tmp_path / "mirror_mean.npz"))
