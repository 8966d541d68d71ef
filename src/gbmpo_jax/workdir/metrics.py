"""The one metrics writer: TensorBoard (tensorboardX), `metrics.jsonl`, and the console.

Names are slash-namespaced (`train/loss`, `rollout/reward_mean`, `div/mean`, `es/fitness_best`).
Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step with a `step`
field. A run directory holds one run: on resume both `metrics.jsonl` and the TensorBoard event
files are cut back to the restored step, and a fresh start (no usable checkpoint) clears them
(`rewind`), so a resumed run's record is identical to an uninterrupted run's and a re-run never
appends to an old one.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import struct
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


def _records(data: bytes):
    """Raw TFRecord frames of an event file: (frame bytes, payload); stops at a torn tail."""
    pos = 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + n + 4
        if end > len(data):
            return
        yield data[pos:end], data[pos + 12 : pos + 12 + n]
        pos = end


def truncate_events(tb_dir: pathlib.Path, step: int) -> None:
    """Drops TensorBoard events with `step` > step from every event file under `tb_dir`.

    Frames are copied byte for byte (their CRCs stay valid); only the step is parsed.
    """
    from tensorboardX.proto.event_pb2 import Event

    for path in sorted(pathlib.Path(tb_dir).glob("**/events.out.tfevents.*")):
        keep = []
        for frame, payload in _records(path.read_bytes()):
            ev = Event()
            ev.ParseFromString(payload)
            if ev.step <= step:
                keep.append(frame)
        if not keep:
            path.unlink()
            continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(keep))
        os.replace(tmp, path)


def rewind(workdir, step: int) -> None:
    """Cuts the run's record back to `step`: metrics.jsonl and the event files under tb/.
    step = -1 (a fresh start) removes both, so the directory never holds two runs."""
    workdir = pathlib.Path(workdir)
    if step < 0:
        (workdir / "metrics.jsonl").unlink(missing_ok=True)
        if (workdir / "tb").is_dir():
            shutil.rmtree(workdir / "tb")
        return
    truncate_after(workdir / "metrics.jsonl", step)
    if (workdir / "tb").is_dir():
        truncate_events(workdir / "tb", step)


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
