"""The one metrics writer: TensorBoard (tensorboardX), `metrics.jsonl`, and the console.

Names are slash-namespaced (`train/loss`, `rollout/reward_mean`, `div/mean`, `es/fitness_best`).
Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step with a `step`
field; on resume it is truncated to the restored step so a resumed run's file is identical to
an uninterrupted run's (see `truncate_after`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time

import numpy as np


def truncate_after(path: pathlib.Path, step: int) -> None:
    """Drops records with `step` > step (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line from a kill mid-write
            if rec.get("step", -1) > step:
                break
            keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Writer:
    """Writes scalars, histograms and text; `enabled=False` (non-zero processes) writes nothing."""

    def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tb"), flush_secs=30)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step)}
        for k, v in sorted(metrics.items()):
            v = float(np.asarray(v)) if not isinstance(v, (int, str)) else v
            rec[k] = v
            if self._tb is not None and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()

    def histogram(self, step: int, name: str, values) -> None:
        if self.enabled and self._tb is not None and len(values):
            self._tb.add_histogram(name, np.asarray(values, np.float64), step)

    def text(self, step: int, name: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(name, text, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class Progress:
    """One console line per log step: step, reward, tokens/s, ETA.

    Interactive terminals get a carriage-return bar; non-interactive output (CI, logs) gets
    one plain line per call, so logs stay greppable.
    """

    def __init__(self, total: int, start: int = 0, *, stream=None, enabled: bool = True):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total}"]
        parts += [f"{k} {_fmt(v)}" for k, v in fields.items()]
        parts.append(f"eta {eta:.0f}s" if math.isfinite(eta) else "eta ?")
        line = " | ".join(parts)
        if self.interactive:
            self.stream.write("\r" + line[:200].ljust(120))
            if step >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
