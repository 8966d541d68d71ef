"""One writer per run directory, and a run directory that holds one run's record."""

import json
import os
import subprocess
import sys
import time

import pytest

from gbmpo_jax.workdir import lock, metrics


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from gbmpo_jax.workdir import lock; lock.RunLock(sys.argv[1]).acquire(); "
         "print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.WorkdirLockedError, match=rf"process {holder.pid} on .*--workdir"):
            lock.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's flock: the stale lock is taken over, and said so
    taken = lock.RunLock(tmp_path).acquire()
    assert taken.stale is not None and taken.stale["pid"] == holder.pid
    assert json.loads((tmp_path / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    taken.release()
    assert not (tmp_path / lock.LOCK_NAME).exists()


def test_a_live_pid_is_respected_even_without_flock(tmp_path):
    """A filesystem that ignores flock: the recorded pid of a live process still refuses."""
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}
        (tmp_path / lock.LOCK_NAME).write_text(json.dumps(rec))
        with pytest.raises(lock.WorkdirLockedError, match=str(sleeper.pid)):
            lock.RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with lock.RunLock(tmp_path) as held:  # the same record, now of a dead process: stale
        assert held.stale["pid"] == sleeper.pid


def test_one_process_cannot_hold_two_locks_on_one_dir(tmp_path):
    with lock.RunLock(tmp_path), pytest.raises(lock.WorkdirLockedError):
        lock.RunLock(tmp_path).acquire()


def _write_run(workdir, steps):
    w = metrics.Writer(workdir)
    for s in steps:
        w.scalars(s, {"train/loss": float(s)})
        w.text(s, "samples/0", f"text {s}")
    w.close()


def _event_steps(tb_dir):
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        for _, payload in metrics._records(f.read_bytes()):
            ev = Event()
            ev.ParseFromString(payload)
            if ev.HasField("summary"):
                out.append(ev.step)
    return out


def test_rewind_cuts_jsonl_and_event_files_to_the_step(tmp_path):
    _write_run(tmp_path, range(6))
    assert sorted(set(_event_steps(tmp_path / "tb"))) == list(range(6))
    metrics.rewind(tmp_path, 3)
    assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    assert sorted(set(_event_steps(tmp_path / "tb"))) == [0, 1, 2, 3]
    time.sleep(1.1)  # tensorboardX names event files by the second
    _write_run(tmp_path, range(4, 6))  # the resumed run appends its own steps
    assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == list(range(6))
    assert sorted(_event_steps(tmp_path / "tb")) == sorted([0, 1, 2, 3, 4, 5] * 2)  # scalar+text
    metrics.rewind(tmp_path, -1)  # a fresh start keeps nothing of the old run
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tb").exists()


def test_the_es_runner_takes_the_lock_too(tmp_path):
    from gbmpo_jax import meta

    cfg, mcfg = meta.load("arith_es_meta:smoke")
    with lock.RunLock(tmp_path), pytest.raises(lock.WorkdirLockedError, match="in use by"):
        meta.run(cfg, mcfg, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written
