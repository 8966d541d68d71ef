"""Checkpoints prove themselves: every saved step carries an integrity record that restore
verifies; a damaged step is named, moved aside, and the newest good step is used."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from gbmpo_jax.workdir import checkpoint


def _state(x: float):
    return {"w": jnp.arange(512, dtype=jnp.float32) + x, "b": jnp.full((4, 4), x)}


@pytest.fixture
def three_steps(tmp_path):
    """Steps 0, 1, 2 saved asynchronously (as training does), each state distinct."""
    d = tmp_path / "checkpoints"
    ck = checkpoint.Checkpointer(d, keep=5, every_steps=1)
    for s in range(3):
        ck.save(s, _state(float(s)), {"step": s}, force=True)
    ck.close()
    return d


def _largest_array_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(step_dir):
    f = _largest_array_file(step_dir)
    b = bytearray(f.read_bytes())
    lo = len(b) // 2 - 32
    b[lo : lo + 64] = bytes(x ^ 0xFF for x in b[lo : lo + 64])
    f.write_bytes(bytes(b))
    return f


def _truncate(step_dir):
    f = _largest_array_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f


def _delete_metadata(step_dir):
    f = step_dir / "state" / "_METADATA"
    f.unlink()
    return f


def test_every_step_is_sealed_and_verifies(three_steps):
    for s in range(3):
        rec = json.loads((three_steps / str(s) / checkpoint.INTEGRITY).read_text())["files"]
        assert "state/_METADATA" in rec and any(k.startswith("meta/") for k in rec)
        assert checkpoint.verify(three_steps / str(s)) is None


@pytest.mark.parametrize("damage", [_flip, _truncate, _delete_metadata])
def test_a_damaged_step_is_named_and_the_previous_one_restores(three_steps, damage):
    f = damage(three_steps / "2")
    rel = f.relative_to(three_steps / "2").as_posix()
    problem = checkpoint.verify(three_steps / "2")
    assert problem is not None and rel in problem
    logs = []
    ck = checkpoint.Checkpointer(three_steps, keep=5)
    assert ck.latest_good_step(logs.append) == 1
    assert len(logs) == 1 and "step 2" in logs[0] and rel in logs[0] and "falling back" in logs[0]
    assert ck.latest_step() == 1  # Orbax's own view agrees: step 2 can be saved again
    state, meta = ck.restore(1, _state(0.0))
    ck.save(2, _state(5.0), {"step": 2}, force=True)
    ck.close()
    assert meta == {"step": 1} and checkpoint.verify(three_steps / "2") is None
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(1.0)["w"]))
    # the damaged step is kept for inspection, outside the directory Orbax manages
    assert (three_steps.parent / "checkpoints_rejected" / "2").is_dir()


def test_read_only_verification_moves_nothing(three_steps):
    _flip(three_steps / "2")
    _flip(three_steps / "1")
    logs = []
    ck = checkpoint.Checkpointer(three_steps, keep=5)
    assert ck.latest_good_step(logs.append, reject=False) == 0
    ck.close()
    assert len(logs) == 2 and (three_steps / "2").is_dir() and (three_steps / "1").is_dir()


def test_a_step_without_a_record_is_not_trusted(three_steps):
    (three_steps / "2" / checkpoint.INTEGRITY).unlink()
    assert "no integrity.json" in checkpoint.verify(three_steps / "2")
    ck = checkpoint.Checkpointer(three_steps, keep=5)
    assert ck.latest_good_step(lambda _: None) == 1
    ck.close()


def test_no_good_step_left(three_steps):
    for s in range(3):
        _delete_metadata(three_steps / str(s))
    ck = checkpoint.Checkpointer(three_steps, keep=5)
    assert ck.latest_good_step(lambda _: None) is None
    assert ck.latest_step() is None  # Orbax no longer sees the rejected steps
    ck.close()


def test_unreadable_step_is_a_named_error(three_steps):
    ck = checkpoint.Checkpointer(three_steps, keep=5)
    with pytest.raises(checkpoint.CheckpointError, match=r"step 1 .*checkpoints/1"):
        ck.restore(1, {"other": jnp.zeros(3)})  # a different state structure
    ck.close()
