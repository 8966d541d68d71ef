"""Finding and loading experiment files: `experiments/<name>.py` defines `get_config(variant)`.

An experiment is named `<name>` or `<name>:<variant>` (e.g. `mbpp_neural_mirror:smoke`; the
paper experiments also have `:rehearsal`, their accelerator path on a CPU).
The directory is `$GBMPO_EXPERIMENTS`, else `./experiments`, else the repository's
`experiments/` next to `src/`. Files starting with `_` hold shared pieces, not experiments.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

from gbmpo_jax import config as config_lib


def experiments_dir() -> pathlib.Path:
    candidates = []
    if os.environ.get("GBMPO_EXPERIMENTS"):
        candidates.append(pathlib.Path(os.environ["GBMPO_EXPERIMENTS"]))
    candidates.append(pathlib.Path.cwd() / "experiments")
    candidates.append(pathlib.Path(__file__).resolve().parents[2] / "experiments")
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(
        f"no experiments directory found (looked in {[str(c) for c in candidates]}); "
        "run from the repository root or set GBMPO_EXPERIMENTS"
    )


def names() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.py") if not p.stem.startswith("_"))


def load(name: str) -> config_lib.Config:
    """Returns the config of experiment `name[:variant]` (not yet validated)."""
    base, _, variant = name.partition(":")
    directory = experiments_dir()
    path = directory / f"{base}.py"
    if base.startswith("_") or not path.is_file():
        raise config_lib.ConfigError(
            f"unknown experiment {base!r}; valid names: {', '.join(names())} "
            "(add ':smoke' for the CPU smoke variant, ':rehearsal' for a paper experiment's "
            "accelerator path on CPU)"
        )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))  # experiment files import their shared `_*.py`
    spec = importlib.util.spec_from_file_location(f"gbmpo_experiments.{base}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise config_lib.ConfigError(f"{path} defines no get_config(variant)")
    try:
        cfg = module.get_config(variant)
    except ValueError as e:
        raise config_lib.ConfigError(f"experiment {name!r}: {e}") from e
    if variant and variant not in ("smoke",) and cfg == module.get_config(""):
        raise config_lib.ConfigError(f"experiment {base!r} has no variant {variant!r}")
    return cfg
