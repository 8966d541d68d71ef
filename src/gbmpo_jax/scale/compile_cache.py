"""Persistent XLA compilation cache: a run's programs are compiled once per machine, not per
process.

Every process of a run (training, a resumed run, each evaluation, the ES runner, a rerun with
another seed) compiles the same programs again: the rollout, the log-prob pass and the
update. On a 2-core CPU that is most of the first step ("3M" benchmark shape: 12.2 s first
step cold, 2.6 s with the programs read from the cache) and the largest share of the
process's peak memory at small shapes (the compiler's working set: "3M" peak RSS 954 MB
cold, 637 MB warm; BENCHMARKS.md). JAX's persistent cache stores the compiled executables
on disk, keyed by the program, the backend, the XLA flags and the jax/jaxlib versions, so a
changed model, shape or version compiles afresh and a stale entry is never used.

``run.compile_cache``: "auto" (default) = ``$GBMPO_COMPILE_CACHE`` when set (empty or "off"
disables), else ``$XDG_CACHE_HOME/gbmpo_jax/xla`` (``~/.cache/gbmpo_jax/xla``); "off"; or a
directory. At most ``MAX_BYTES`` on disk (JAX evicts the least recently used entries).
"auto" whose directory cannot be created runs without a cache; an explicit directory that
cannot be created is an input error.

The cache is trusted code: as JAX warns, whoever can write to its directory can make this
process run arbitrary code, so keep it private (the default is in the user's home).
"""

from __future__ import annotations

import os
import pathlib

ENV = "GBMPO_COMPILE_CACHE"
MAX_BYTES = 4 * 2**30
# programs compiling faster than this are not worth a disk entry (JAX's default is 1 s;
# lower, so the log-prob pass and small models' updates are cached too)
MIN_COMPILE_SECONDS = 0.3


def resolve(setting: str) -> pathlib.Path | None:
    """The cache directory ``setting`` names (see the module docstring), or None for off."""
    if setting == "off":
        return None
    if setting != "auto":
        return pathlib.Path(setting).expanduser()
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip() in ("", "off") else pathlib.Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "gbmpo_jax" / "xla"


def enable(setting: str) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at ``resolve(setting)``; returns the
    directory, or None (off, or "auto" without a writable directory). Raises OSError for an
    explicit directory that cannot be created or written."""
    import jax

    path = resolve(setting)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError:
        if setting == "auto":
            return None
        raise
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
