"""The persistent compilation cache (scale/compile_cache.py): where "auto" points, bad
directories, and a second process reading the first one's executables."""

import os
import subprocess
import sys

import pytest

from gbmpo_jax import config as config_lib
from gbmpo_jax import errors, train
from gbmpo_jax.scale import compile_cache


def test_auto_follows_the_environment_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.resolve("auto") == tmp_path / "c"
    for off in ("", "off"):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.resolve("auto") is None
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.resolve("auto") == tmp_path / "xdg" / "gbmpo_jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.resolve("auto") == tmp_path / "home" / ".cache" / "gbmpo_jax" / "xla"
    assert compile_cache.resolve("off") is None
    assert compile_cache.resolve("~/x") == tmp_path / "home" / "x"


def test_an_unusable_directory_is_an_error_only_when_named(monkeypatch, tmp_path):
    """An explicit run.compile_cache that cannot be created fails at set-up naming the key;
    "auto" then runs without a cache (a note in the log), never half-configured."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        compile_cache.enable(str(blocker / "cache"))
    monkeypatch.setenv(compile_cache.ENV, str(blocker / "cache"))
    assert compile_cache.enable("auto") is None
    cfg = config_lib.override(config_lib.Config(), **{"run.compile_cache": str(blocker / "c")})
    with pytest.raises(errors.InputError, match=r"run.compile_cache=.*writable directory"):
        train.setup(cfg, log=lambda *_: None)


def test_a_second_process_reads_the_first_ones_executables(tmp_path):
    """The real JAX cache: the first process compiles and writes, the second one hits."""
    code = (
        "import jax, jax.numpy as jnp, sys\n"
        "from gbmpo_jax.scale import compile_cache\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(\n"
        "    lambda e, **_: hits.append(e) if e.endswith('cache_hits') else None)\n"
        "print(compile_cache.enable(sys.argv[1]))\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)\n"
        "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())\n"
        "print(float(f(jnp.ones((64, 64)))), len(hits))\n"
    )
    cache = tmp_path / "xla"
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True,
                             text=True, env={**os.environ})  # fmt: skip
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split())
    assert runs[0][0] == str(cache) and any(cache.iterdir())
    assert runs[0][1] == runs[1][1]  # same value
    assert int(runs[0][2]) == 0 and int(runs[1][2]) >= 1  # compiled, then read back


def test_an_empty_setting_is_rejected_before_anything_runs():
    cfg = config_lib.override(config_lib.Config(), **config_lib.parse_overrides(
        ["run.compile_cache="]))  # fmt: skip
    with pytest.raises(config_lib.ConfigError, match="run.compile_cache: must be 'auto'"):
        config_lib.validate(cfg)


def test_setup_says_when_remat_cannot_save_memory():
    """model.remat over unrolled layers keeps its recompute in the forward on XLA:CPU: the
    set-up log says so and how to get remat's memory; the scanned setting gets no note."""
    from gbmpo_jax import experiment

    logs = {}
    for scan in (False, True):
        cfg = config_lib.override(experiment.load("default:smoke"),
                                  **{"model.remat": True, "model.scan_layers": scan})  # fmt: skip
        lines = []
        train.setup(config_lib.validate(cfg), log=lines.append)
        logs[scan] = " ".join(lines)
    assert "model.remat saves no memory" in logs[False] and "scan_layers=true" in logs[False]
    assert "model.remat" not in logs[True]
