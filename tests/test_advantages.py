"""Advantage estimators against hand-computed values."""

import jax
import numpy as np
import pytest

from gbmpo_jax.rl import advantages as adv

R = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], np.float32)  # 3 x 4


def _np_groups(r, g=4):
    return r.astype(np.float64).reshape(-1, g)


def test_dr_grpo_is_group_centering():
    a, m = adv.get("dr_grpo")(R, 4)
    want = _np_groups(R) - _np_groups(R).mean(1, keepdims=True)
    np.testing.assert_allclose(a, want.ravel(), atol=1e-7)
    assert float(m["adv/zero_std_frac"]) == pytest.approx(1 / 3)  # group 2 all ones


def test_grpo_group_and_batch_scaling():
    g = _np_groups(R)
    centered = g - g.mean(1, keepdims=True)
    a, _ = adv.get("grpo")(R, 4)
    np.testing.assert_allclose(
        a, (centered / (g.std(1, ddof=1, keepdims=True) + 1e-4)).ravel(), rtol=1e-6
    )
    a, _ = adv.get("grpo", scale_rewards="batch")(R, 4)
    np.testing.assert_allclose(a, (centered / (R.std(ddof=1) + 1e-4)).ravel(), rtol=1e-6)
    a, _ = adv.get("grpo", scale_rewards="none")(R, 4)
    np.testing.assert_allclose(a, centered.ravel(), atol=1e-7)


def test_rloo_leave_one_out():
    a, _ = adv.get("rloo")(R, 4)
    g = _np_groups(R)
    loo = (g.sum(1, keepdims=True) - g) / 3
    np.testing.assert_allclose(a, (g - loo).ravel(), atol=1e-6)


def test_zero_std_group_has_zero_advantage_under_every_estimator():
    for name in adv.REGISTRY:
        a, m = jax.jit(adv.get(name), static_argnums=1)(R, 4)
        np.testing.assert_array_equal(np.asarray(a)[4:8], 0.0)
        assert float(m["adv/zero_std_frac"]) == pytest.approx(1 / 3)
        assert np.isfinite(float(m["adv/std"]))


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="scale_rewards"):
        adv.get("grpo", scale_rewards="global")
    with pytest.raises(ValueError, match="unknown advantage"):
        adv.get("ppo")
    with pytest.raises(ValueError, match="group_size"):
        adv.get("grpo")(R, 5)
