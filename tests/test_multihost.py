"""Two JAX processes on CPU (4 simulated devices each, Gloo collectives) run one train step on
a globally sharded batch built from each host's own rows, and get the one-device parameters.

The worker is this file run as a script: `python tests/test_multihost.py PORT PID OUT`.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
MESH = dict(data=2, fsdp=2, tensor=2)


def worker(port: int, pid: int, out: str) -> None:
    sys.path.insert(0, str(HERE))
    from gbmpo_jax.config import MeshCfg
    from gbmpo_jax.scale import distributed

    cfg = MeshCfg(coordinator=f"localhost:{port}", num_processes=2, process_id=pid, **MESH)
    distributed.initialize(cfg, timeout_s=60)  # before any other JAX call
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from gbmpo_jax.rl import placement
    from gbmpo_jax.scale import mesh
    from test_mesh import N, problem

    assert jax.process_count() == 2 and len(jax.devices()) == 8, jax.devices()
    assert len(jax.local_devices()) == 4
    assert distributed.is_main_process() == (pid == 0)
    mc, state, batch, update = problem()
    m = mesh.setup(cfg)
    st, sh = placement.shard_state(state, mc, m)
    lo, hi = mesh.host_row_range(N, m)
    assert hi - lo == N // 2  # each host owns half of the rows
    rows = distributed.process_shard(np.arange(N))
    np.testing.assert_array_equal(rows, np.arange(lo, hi))
    local = {k: v[lo:hi] for k, v in batch.items()}  # this host's rows only
    gbatch = mesh.global_batch_from_host_rows(local, m, N)
    np.testing.assert_array_equal(mesh.host_local_rows(gbatch["input_ids"]), local["input_ids"])
    new, metrics = mesh.jit_update(update, sh, m)(st, gbatch, jax.random.key(3))
    params = multihost_utils.process_allgather(new.params, tiled=True)
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(params)}
    flat["metric_loss"] = np.asarray(jax.device_get(metrics["train/loss"]))
    np.savez(out, **flat)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    sys.exit(0)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.mark.slow
@pytest.mark.essential
def test_two_processes_match_one_device(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    port = _free_port()
    outs = [tmp_path / f"p{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(port), str(i), str(outs[i])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    sys.path.insert(0, str(HERE))
    from test_mesh import problem  # the same deterministic problem, on one device here

    _, state, batch, update = problem()
    ref, ref_m = jax.device_get(jax.jit(update)(state, batch, jax.random.key(3)))
    deadline = time.monotonic() + 240
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            logs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(logs)[-4000:]
    want = {jax.tree_util.keystr(p): x for p, x in jax.tree.leaves_with_path(ref.params)}
    for out in outs:
        got = np.load(out)
        assert set(got.files) - {"metric_loss"} == set(want)
        for k, x in want.items():
            np.testing.assert_allclose(got[k], x, atol=1e-5, rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(got["metric_loss"], ref_m["train/loss"], atol=1e-5)


def test_missing_coordinator_is_a_clear_error():
    """A worker whose coordinator never comes up fails fast with the address in the message
    (JAX alone would abort the process after its timeout)."""
    from gbmpo_jax.config import MeshCfg
    from gbmpo_jax.scale import distributed

    port = _free_port()
    cfg = MeshCfg(coordinator=f"localhost:{port}", num_processes=2, process_id=1)
    t0 = time.monotonic()
    with pytest.raises(distributed.DistributedError, match=f"localhost:{port}"):
        distributed.initialize(cfg, timeout_s=1)
    assert time.monotonic() - t0 < 10
    with pytest.raises(distributed.DistributedError, match="HOST:PORT"):
        distributed.initialize(MeshCfg(coordinator="nohostport", num_processes=2))
    with pytest.raises(distributed.DistributedError, match="process_id=2"):
        distributed.initialize(MeshCfg(coordinator="h:1", num_processes=2, process_id=2))
    with pytest.raises(distributed.DistributedError, match="needs mesh.coordinator"):
        distributed.initialize(MeshCfg(num_processes=2))
    assert distributed.initialize(MeshCfg()) is False


def test_process_shard():
    from gbmpo_jax.scale import distributed

    items = list(range(10))
    parts = [distributed.process_shard(items, i, 3) for i in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert distributed.process_shard(items) == items  # one process here
    with pytest.raises(ValueError, match="process_index=3"):
        distributed.process_shard(items, 3, 3)
