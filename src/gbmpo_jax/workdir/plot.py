"""Curves of one or several runs to PNG: `python -m gbmpo_jax.workdir.plot RUN [RUN ...] --out F.png`.

Reads each run's `metrics.jsonl` and draws reward, held-out accuracy, divergence and
completion length against step, one line per run (labelled by its directory name).
"""

from __future__ import annotations

import argparse
import pathlib

from gbmpo_jax.workdir.metrics import read_jsonl

PANELS = (
    ("rollout/reward_mean", "train reward (mean)"),
    ("eval/accuracy", "held-out accuracy (greedy)"),
    ("div/mean", "divergence to reference (mean per token)"),
    ("rollout/length_mean", "completion length (tokens)"),
)


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(run_dirs, out, panels=PANELS) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for d in map(pathlib.Path, run_dirs):
        path = d / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass run directories written by train")
        runs.append((d.name, read_jsonl(path)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, recs in runs:
            xs, ys = series(recs, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    ap.add_argument("--out", default="curves.png")
    args = ap.parse_args(argv)
    print(plot_runs(args.runs, args.out))


if __name__ == "__main__":
    main()
