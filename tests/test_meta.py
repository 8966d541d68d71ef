"""The ES outer loop (gbmpo_jax.meta): synthetic-fitness optimisation, resume, CLI, compare."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax import config as C
from gbmpo_jax import meta, policy
from gbmpo_jax.es import population
from gbmpo_jax.es import strategies as es
from gbmpo_jax.rl import divergences
from gbmpo_jax.workdir import metrics

REF = jax.device_get(divergences.reference_init())
R = {k: np.asarray(REF[k], np.float64) for k in es.KEYS}
F_MAX = 4.0


def synthetic_fitness(programs, mode, div_params, steps):
    """No LLM: the best map doubles a, c and the mean of v; F_MAX - 3 = 1 at the reference map
    (each ratio 1: (1 - 2)^2 three times), F_MAX at the optimum. Positive near the start: the
    paper ES's raw-fitness gradient counts only f > 0 (accuracies, in the real loop)."""
    f = F_MAX - (
        (div_params["a"] / R["a"] - 2) ** 2
        + (div_params["c"] / R["c"] - 2) ** 2
        + (jnp.mean(div_params["v"], -1) / R["v"].mean() - 2) ** 2
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
    # additive on the raw coefficients: c = 4e-4 in the reference init sets the scale
    "paper": dict(sigma=1e-4, lr=5e-8, sigma_decay=0.99),
}


@pytest.mark.parametrize("name", sorted(es.STRATEGIES))
def test_es_loop_improves_a_synthetic_fitness(name, synthetic, tmp_path):
    cfg, mcfg = _cfgs(strategy=name, generations=10, **STRATEGY_KW[name])
    meta.run(cfg, mcfg, tmp_path, log=lambda *_: None)
    recs = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    first, last = recs[0]["es/mean_fitness"], recs[-1]["es/mean_fitness"]
    assert first == pytest.approx(F_MAX - 3, abs=0.01)  # the reference map, before any step
    # closes >= 25% of the gap in 10 generations
    assert F_MAX - last < 0.75 * (F_MAX - first), (name, first, last)
    assert recs[-1]["es/fitness_best"] >= max(r["es/fitness_max"] for r in recs) - 1e-6
    for k in ("es/fitness_mean", "es/fitness_std", "es/fitness_min", "es/sigma",
              "es/update_norm", "es/member_fitness/7"):  # fmt: skip
        assert k in recs[-1]
    best = policy.load_mirror_params(str(tmp_path / "mirror_best.npz"))  # validated, >= 0
    assert set(best) == set(es.KEYS)
    assert (tmp_path / "es_curve.png").is_file() and (tmp_path / "mirror_slope.png").is_file()


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_paper_es_loop_reports_and_uses_the_elites_stored_fitness(mode, monkeypatch, tmp_path):
    calls = []

    def sinking(programs, mode, div_params, steps):  # each population scores 2 lower
        res = synthetic_fitness(programs, mode, div_params, steps)
        calls.append(len(res.fitness))
        return res._replace(fitness=res.fitness - 2.0 * (len(calls) - 1))

    monkeypatch.setattr(population, "run_population", sinking)
    cfg, mcfg = _cfgs(strategy="paper", generations=3, eval_mean=False, population_mode=mode,
                      **STRATEGY_KW["paper"])  # fmt: skip
    meta.run(cfg, mcfg, tmp_path, log=lambda *_: None)
    recs = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    fit = [[r[f"es/member_fitness/{i}"] for i in range(8)] for r in recs]
    assert [r["es/accepted"] for r in recs] == [1.0, 0.0, 0.0]  # the mean fitness sinks
    assert [r["es/reused"] for r in recs] == [0.0, 0.0, 2.0]
    # generation 3's first two rows are generation 2's two fittest, ascending, as stored
    # (run again they would score 2 lower)
    np.testing.assert_allclose(fit[2][:2], sorted(fit[1])[-2:], rtol=1e-6)
    assert all(f < min(fit[2][:2]) - 0.3 for f in fit[2][2:])
    assert recs[2]["es/fitness_mean"] == pytest.approx(np.mean(fit[2]), rel=1e-6)
    assert recs[1]["es/update_norm"] == 0.0 and recs[2]["es/update_norm"] == 0.0
    # vmap keeps one program shape (the elite rows run, their result discarded); sequential
    # runs only the 6 new members
    assert calls == [8, 8, 8 if mode == "vmap" else 6]


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


def test_compare_carries_the_es_mean_by_default_and_the_best_member_by_flag(monkeypatch, tmp_path):
    seen = []

    def fake_compare(cfg, mcfg, mirror, seeds, workdir, *, carry, log=print):
        seen.append((mirror, carry))
        return [{"method": meta.CARRY[carry][1], "acc_mean": 0.5, "acc_std": 0.0,
                 "length_mean": 1.0, "seeds": seeds}]  # fmt: skip

    monkeypatch.setattr(meta, "compare", fake_compare)
    argv = ["compare", "--exp", "arith_es_meta:smoke", "--workdir", str(tmp_path), "--seeds", "1"]
    assert meta.main(argv) == 2  # no ES result yet: the error names the missing file
    for name in ("mirror_mean.npz", "mirror_best.npz"):
        (tmp_path / name).write_bytes(b"")
    assert meta.main(argv) == 0
    assert meta.main([*argv, "--carry", "best"]) == 0
    assert seen == [(tmp_path / "mirror_mean.npz", "mean"), (tmp_path / "mirror_best.npz", "best")]
    assert meta.CARRY["best"][1] == "neural mirror (ES best member)"
    # the table and the plot land in the workdir
    assert (
        "| neural mirror (ES best member) | 50.0 ± 0.0 |" in (tmp_path / "compare.md").read_text()
    )
    assert (tmp_path / "compare.png").stat().st_size > 1000


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


def test_cli_bad_input_is_one_sentence(tmp_path, capsys):
    """The ES CLI reports a bad model file as one line naming the key (exit 2), like train."""
    empty = tmp_path / "empty.gguf"
    empty.touch()
    argv = [f"model.path={empty}", "--exp", "arith_es_meta:smoke",
            "--workdir", str(tmp_path / "wd"), "meta.generations=1"]  # fmt: skip
    assert meta.main(argv) == 2
    err = capsys.readouterr().err
    assert "model.path=" in err and "empty" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def test_search_space_is_checked_once_by_name():
    meta.validate_meta(meta.MetaCfg(search_space="softplus_scale"))
    with pytest.raises(C.ConfigError, match="meta.search_space"):
        meta.validate_meta(meta.MetaCfg(strategy="paper", search_space="softplus_scale"))
    with pytest.raises(C.ConfigError, match="meta.search_space"):
        meta.validate_meta(meta.MetaCfg(search_space="log"))


def test_member_chunk_is_checked_and_auto_follows_the_row_budget():
    with pytest.raises(C.ConfigError, match="meta.member_chunk"):
        meta.validate_meta(meta.MetaCfg(member_chunk=-1))
    budget = population.ROWS_PER_ITERATION["cpu"]
    assert population.auto_chunk(8, 8, "cpu") == min(8, budget // 8)
    assert population.auto_chunk(4 * budget, 8, "cpu") == 1  # never 0
    assert population.auto_chunk(1, 8, "cpu") == 8  # never more than P
    assert population.auto_chunk(128, 8, "gpu") == 8  # accelerators batch the population
