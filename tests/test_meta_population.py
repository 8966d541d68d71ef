"""Population execution modes give the same inner runs (gbmpo_jax.es.population), tiny model."""

import jax
import numpy as np
import pytest

from gbmpo_jax.es import population
from gbmpo_jax.es import strategies as es
from gbmpo_jax.rl import divergences


@pytest.mark.slow
@pytest.mark.essential
def test_vmap_mesh_and_sequential_give_the_same_fitness(digit_run):
    assert len(jax.devices()) == 8
    cfg, model, tok, obj, td = digit_run
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
