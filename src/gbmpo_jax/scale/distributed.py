"""Multi-host start-up: `initialize(mesh_cfg)` before any other JAX call, then one global mesh.

`mesh.coordinator` selects the mode:
  ""           single process (nothing to do);
  "auto"       `jax.distributed.initialize()` with no arguments: JAX detects the cluster
               (Cloud TPU VM metadata, Slurm's SLURM_* variables, Open MPI, ...);
  "HOST:PORT"  explicit: process `mesh.process_id` of `mesh.num_processes`, coordinator
               service on HOST:PORT (process 0 binds it). Used by launch/gpu/slurm.sbatch and
               the two-process CPU test.
Every process then sees all devices in `jax.devices()` and its own in `jax.local_devices()`.
A host that cannot reach the coordinator fails after `timeout_s` with a DistributedError
naming the address, instead of hanging: JAX itself aborts the process (LOG(FATAL), no Python
exception) when its connect deadline passes, so non-coordinator processes first probe the
TCP port themselves. The coordinator (process 0) prints what it waits for; if a peer never
comes, JAX aborts it after `timeout_s` with "DEADLINE_EXCEEDED ... RegisterTask".

Data: each host reads its own share of the examples (`process_shard`); only process 0 writes
logs, metrics and exports (`is_main_process`). Checkpoints are written by every process (Orbax
coordinates the shards), so the workdir must be shared (a GCS bucket or a shared filesystem).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence

import jax


class DistributedError(RuntimeError):
    """Multi-host start-up failed; the message names the config field and the address."""


def _parse_address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"mesh.coordinator={coordinator!r}: use '' (single process), 'auto', or HOST:PORT "
            "(e.g. 10.0.0.2:8476)"
        )
    return host, int(port)


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """True once a TCP connection to host:port succeeds; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def initialize(mesh_cfg, timeout_s: int = 300) -> bool:
    """Starts JAX's distributed runtime per `mesh_cfg` (config.MeshCfg); True if it did.

    Call once per process before any other JAX call (device queries included)."""
    coord = mesh_cfg.coordinator
    if not coord:
        if mesh_cfg.num_processes != 1:
            raise DistributedError(
                f"mesh.num_processes={mesh_cfg.num_processes} needs mesh.coordinator "
                "('auto' or HOST:PORT)"
            )
        return False
    if coord == "auto":
        try:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"mesh.coordinator=auto: JAX could not detect the cluster ({e}); on TPU VMs "
                "start the same command on every worker (--worker=all), under Slurm use srun, "
                "else pass mesh.coordinator=HOST:PORT mesh.num_processes=N mesh.process_id=I"
            ) from e
        return True
    host, port = _parse_address(coord)
    n, pid = mesh_cfg.num_processes, mesh_cfg.process_id
    if n < 1:
        raise DistributedError(f"mesh.num_processes={n} must be >= 1")
    if not 0 <= pid < n:
        raise DistributedError(f"mesh.process_id={pid} must be in [0, mesh.num_processes={n})")
    if pid == 0:
        print(
            f"distributed: coordinator on {coord}, waiting up to {timeout_s} s for {n} processes",
            file=sys.stderr,
            flush=True,
        )
    elif not wait_for_port(host, port, timeout_s):
        raise DistributedError(
            f"process {pid}/{n}: no coordinator answered at mesh.coordinator={coord!r} within "
            f"{timeout_s} s: start process 0 (mesh.process_id=0) on {host}, check that port "
            f"{port} is reachable from this host (firewall), and that HOST is process 0's address"
        )
    try:
        jax.distributed.initialize(
            coordinator_address=coord,
            num_processes=n,
            process_id=pid,
            initialization_timeout=timeout_s,
        )
    except Exception as e:  # XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE) and friends
        raise DistributedError(
            f"process {pid}/{n} could not join the coordinator at mesh.coordinator={coord!r} "
            f"within {timeout_s} s ({type(e).__name__}: {str(e)[:300]}): check that process 0 "
            "runs, that HOST:PORT is reachable from this host, and that all "
            f"{n} processes were started"
        ) from e
    return True


def shutdown() -> None:
    jax.distributed.shutdown()


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0 (the one that logs, writes metrics and exports)."""
    return jax.process_index() == 0


def process_shard(items: Sequence, process_index: int | None = None, process_count=None):
    """This process's contiguous share of `items`: process i of n gets
    items[i*k : (i+1)*k] with k = len(items) // n (the remainder is dropped so every process
    holds the same count, which the global batch needs)."""
    i = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if not 0 <= i < n:
        raise ValueError(f"process_index={i} must be in [0, process_count={n})")
    k = len(items) // n
    return items[i * k : (i + 1) * k]


def env_summary() -> dict:
    """Which launcher variables are set (for the start-up log line)."""
    keys = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "TPU_WORKER_ID", "MEGASCALE_NUM_SLICES")
    return {k: os.environ[k] for k in keys if k in os.environ}
