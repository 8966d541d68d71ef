"""Population execution modes give the same inner runs (gbmpo_jax.es.population), tiny model."""

import jax
import numpy as np
import pytest

from gbmpo_jax import config as C
from gbmpo_jax import policy
from gbmpo_jax.es import population
from gbmpo_jax.es import strategies as es
from gbmpo_jax.rl import divergences
from gbmpo_jax.tasks import episodes


class DigitTask:
    """The arithmetic examples scored by the fraction of digit characters: a dense reward, so
    the random tiny model gets non-zero advantages, members' params move apart, and equal
    results across modes are not the trivial all-zero accuracy."""

    kind = "math"

    def rewards(self, texts, examples, **kw):
        return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.mark.slow
@pytest.mark.essential
def test_vmap_mesh_and_sequential_give_the_same_fitness():
    assert len(jax.devices()) == 8
    cfg = C.validate(C.override(C.Config(), **{
        "model.path": "random", "model.random_shape": "tiny", "model.tokenizer": "char",
        "task.name": "arithmetic", "task.eval_size": 4, "task.max_prompt_len": 32,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
        "rollout.temperature": 1.0, "objective.divergence": "neural_mirror",
        "objective.coef": 10.0, "objective.mask_truncated_completions": False,
        "optim.lr": 1e-2, "optim.schedule": "constant", "optim.warmup_ratio": 0.0,
        "run.steps": 2,
    }))  # fmt: skip
    model, tok = policy.load_model_and_tokenizer(cfg)
    obj = policy.build_objective(cfg, model.config, tok)
    td = episodes.TrainData.from_config(cfg, tok)
    td.task = DigitTask()
    ad = es.mirror_adapter()
    z0 = ad.from_params(jax.device_get(divergences.reference_init()))
    params = ad.to_params(z0 + 2.0 * jax.random.normal(jax.random.key(3), (4, es.DIM)))
    mesh = population.pop_mesh(4)
    assert dict(mesh.shape) == {"pop": 4, "data": 2}
    programs = {
        "vmap": population.make_programs(cfg, model, tok, obj, td),
        "mesh": population.make_programs(cfg, model, tok, obj, td, mesh),
    }
    res = {m: population.run_population(programs, m, params, 2) for m in population.MODES}
    ref = res["vmap"]
    norms = ref.aux["inner/param_norm"]
    assert np.ptp(norms) > 1e-5, norms  # the mirror maps made the members differ
    assert np.all(ref.aux["inner/loss_mean"] != 0)
    for mode in ("mesh", "sequential"):
        np.testing.assert_allclose(res[mode].fitness, ref.fitness, atol=1e-6, err_msg=mode)
        for k, v in ref.aux.items():
            np.testing.assert_allclose(res[mode].aux[k], v, rtol=1e-4, atol=1e-7,
                                       err_msg=f"{mode} {k}")  # fmt: skip
