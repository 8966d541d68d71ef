"""Checkpoints through Orbax: the only module that imports orbax.

A checkpoint at step s holds the whole run state after s completed steps:
  * `state`: the array pytree (TrainState: params or LoRA adapters, optimizer state, step,
    frozen reference, divergence / mirror-map parameters, skip counters) — saved with
    `StandardSave` so each host writes its own shards on multi-host runs;
  * `meta`: JSON with the resolved config, the data-order state, the base PRNG seed, and
    anything else the loop needs to continue bit-identically.

Resume order (train.py): build everything from the config -> `latest_good_step` (the newest
step that verifies) -> refuse on config mismatch (`check_compatible`) -> `restore` gives
(state, meta) -> rewind metrics.jsonl and tb/ to the restored step -> continue at step + 1
with keys derived from (seed, step).

Multi-host: only process 0 writes integrity records and moves failed steps, and it hashes
every host's shard files, so the checkpoint directory must be one shared (local or network)
filesystem path.

Atomicity: Orbax writes into a temporary directory and renames it when complete, so a kill
mid-save leaves either the previous checkpoint or an unfinalised temp dir that is ignored.
Saves are asynchronous (the next step runs while arrays are written); `wait` blocks.

Integrity: every step carries `integrity.json`, the size and SHA-256 of each file Orbax wrote
(all but its own commit markers, which it rewrites after finalising). It is written inside the
temporary directory just before Orbax renames it (a post-finalisation callback), so a step
directory either holds its record or was never completed. `latest_good_step` verifies steps
newest first; a step whose files are missing, truncated or changed, or that has no record, is
reported by name and moved to `checkpoints_rejected/`, and the run falls back to the newest
step that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time

import jax
import orbax.checkpoint as ocp

from gbmpo_jax import config as config_lib

# Fields that may differ between the run that saved and the run that resumes (they do not
# change the trajectory up to the saved step).
RESUMABLE_CHANGES = (
    "model.scan_layers",  # the same math, another loop (float rounding only)
    "run.steps",
    "run.log_every",
    "run.eval_every",
    "run.save_every_steps",
    "run.save_every_minutes",
    "run.keep",
    "run.export",
    "run.samples_to_log",
)


INTEGRITY = "integrity.json"
# Files Orbax (re)writes after the integrity record is taken: checked for nothing.
_ORBAX_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointMismatchError(ValueError):
    """The checkpoint in the workdir was written by a run with a different config."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the message names the step directory and the fix."""


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: pathlib.Path) -> list[str]:
    out = []
    for p in sorted(step_dir.rglob("*")):
        rel = p.relative_to(step_dir).as_posix()
        if p.is_file() and rel != INTEGRITY and rel not in _ORBAX_COMMIT_FILES:
            out.append(rel)
    return out


def seal(step_dir) -> None:
    """Writes the integrity record of a complete step directory (size + SHA-256 per file)."""
    step_dir = pathlib.Path(step_dir)
    record = {rel: [(step_dir / rel).stat().st_size, _sha256(step_dir / rel)]
              for rel in _files(step_dir)}  # fmt: skip
    tmp = step_dir / (INTEGRITY + ".tmp")
    tmp.write_text(json.dumps({"files": record}, indent=0))
    os.replace(tmp, step_dir / INTEGRITY)


def verify(step_dir) -> str | None:
    """None if the step directory matches its integrity record, else what is wrong (a phrase
    naming the file)."""
    step_dir = pathlib.Path(step_dir)
    try:
        record = json.loads((step_dir / INTEGRITY).read_text())["files"]
    except FileNotFoundError:
        return f"no {INTEGRITY} (written before integrity records, or never completed)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{INTEGRITY} is unreadable"
    for rel, (size, digest) in sorted(record.items()):
        p = step_dir / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, {size} were written"
        if _sha256(p) != digest:
            return f"{rel} does not match its checksum (changed on disk)"
    return None


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
        self.rejected_dir = self.directory.parent / "checkpoints_rejected"
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60.0
        self.async_save = async_save
        self._last_save_time = time.monotonic()
        self._saving: int | None = None  # the step whose async save is in flight
        self._primary = jax.process_index() == 0
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
                async_options=(
                    ocp.AsyncOptions(post_finalization_callback=self._seal_in_flight)
                    if async_save
                    else None
                ),
            ),
        )

    def _seal_in_flight(self) -> None:
        """Orbax calls this once the step's files are complete, before it renames the temp
        directory: the record becomes visible together with the step."""
        step = self._saving
        if step is not None and self._primary:
            tmp = self.directory / f"{step}{_TMP_SUFFIX}"
            seal(tmp if tmp.is_dir() else self.directory / str(step))

    def _seal_missing(self) -> None:
        """Seals finished steps that lack a record (a backend that did not rename)."""
        if self._saving is None or not self._primary:
            return
        d = self.directory / str(self._saving)
        if d.is_dir() and not (d / INTEGRITY).exists():
            seal(d)
        self._saving = None

    def latest_good_step(self, log=print, *, reject: bool = True) -> int | None:
        """The newest step that verifies. Each newer step that does not is reported through
        `log` by name and, with `reject`, moved to `checkpoints_rejected/`."""
        for step in sorted(self._mngr.all_steps(), reverse=True):
            problem = verify(self.directory / str(step))
            if problem is None:
                return step
            where = self.directory / str(step)
            if reject and self._primary:
                self.rejected_dir.mkdir(parents=True, exist_ok=True)
                dest = self.rejected_dir / str(step)
                n = 1
                while dest.exists():
                    n += 1
                    dest = self.rejected_dir / f"{step}-{n}"
                shutil.move(str(where), dest)
                self._mngr.reload()  # Orbax caches its step list
                log(f"checkpoint step {step} failed verification: {problem}; moved {where} to "
                    f"{dest}; falling back to the previous step")  # fmt: skip
            else:
                log(f"checkpoint step {step} failed verification: {problem} ({where}); "
                    "skipping it")  # fmt: skip
        return None

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def should_save(self, step: int) -> bool:
        if step % self.every_steps == 0:
            return True
        return time.monotonic() - self._last_save_time >= self.every_seconds

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        if not force and not self.should_save(step):
            return False
        self._mngr.wait_until_finished()  # Orbax waits here anyway; the callback needs the step
        self._seal_missing()
        self._saving = step
        saved = self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._last_save_time = time.monotonic()
        if not self.async_save:
            self._seal_missing()
        return saved

    def restore(self, step: int, like_state):
        """Restores (state, meta) at `step`; `like_state` gives structure, dtypes, shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        out = self._restore(step, args)
        return out["state"], out["meta"]

    def restore_meta(self, step: int) -> dict:
        return self._restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _restore(self, step: int, args):
        try:
            return self._mngr.restore(step, args=args)
        except Exception as e:  # Orbax / TensorStore raise many types; name the step instead
            raise CheckpointError(
                f"cannot restore checkpoint step {step} from {self.directory / str(step)} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); if the "
                "config changed, use a fresh --workdir; otherwise move that step directory "
                "away to resume from the previous one"
            ) from e

    def wait(self) -> None:
        self._mngr.wait_until_finished()
        self._seal_missing()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._seal_missing()
        self._mngr.close()
