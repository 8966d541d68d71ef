"""Checkpoints through Orbax: the only module that imports orbax.

A checkpoint at step s holds the whole run state after s completed steps:
  * `state`: the array pytree (TrainState: params or LoRA adapters, optimizer state, step,
    frozen reference, divergence / mirror-map parameters, skip counters) — saved with
    `StandardSave` so each host writes its own shards on multi-host runs;
  * `meta`: JSON with the resolved config, the data-order state, the base PRNG seed, and
    anything else the loop needs to continue bit-identically.

Resume order (train.py): build everything from the config -> `restore_latest` gives
(state, meta) -> refuse on config mismatch (`check_compatible`) -> truncate metrics.jsonl to
the restored step -> continue at step + 1 with keys derived from (seed, step).

Atomicity: Orbax writes into a temporary directory and renames it when complete, so a kill
mid-save leaves either the previous checkpoint or an unfinalised temp dir that is ignored.
Saves are asynchronous (the next step runs while arrays are written); `wait` blocks.
"""

from __future__ import annotations

import pathlib
import time

import jax
import orbax.checkpoint as ocp

from gbmpo_jax import config as config_lib

# Fields that may differ between the run that saved and the run that resumes (they do not
# change the trajectory up to the saved step).
RESUMABLE_CHANGES = (
    "run.steps",
    "run.log_every",
    "run.eval_every",
    "run.save_every_steps",
    "run.save_every_minutes",
    "run.keep",
    "run.export",
    "run.samples_to_log",
)


class CheckpointMismatchError(ValueError):
    """The checkpoint in the workdir was written by a run with a different config."""


def check_compatible(saved: dict, current: config_lib.Config) -> None:
    """Raises naming every differing field unless only resumable fields changed."""
    delta = config_lib.diff(config_lib.from_dict(saved), current)
    bad = {k: v for k, v in delta.items() if k not in RESUMABLE_CHANGES}
    if bad:
        lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, (a, b) in bad.items())
        raise CheckpointMismatchError(
            "the workdir holds a checkpoint from a different config; these fields differ:\n"
            f"{lines}\nuse a fresh --workdir, or rerun with the checkpoint's values"
        )


class Checkpointer:
    """Saves every `every_steps` steps or `every_minutes` minutes, keeps the last `keep`."""

    def __init__(
        self,
        directory,
        *,
        keep: int = 3,
        every_steps: int = 100,
        every_minutes: float = 30.0,
        async_save: bool = True,
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0
        self._last_save_time = time.monotonic()
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def should_save(self, step: int) -> bool:
        if step % self.every_steps == 0:
            return True
        return time.monotonic() - self._last_save_time >= self.every_seconds

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        if not force and not self.should_save(step):
            return False
        saved = self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._last_save_time = time.monotonic()
        return saved

    def restore(self, step: int, like_state):
        """Restores (state, meta) at `step`; `like_state` gives structure, dtypes, shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["meta"]

    def restore_meta(self, step: int) -> dict:
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out["meta"]

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
