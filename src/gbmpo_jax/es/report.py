"""What an ES run leaves behind: mirror maps as .npz, the meta-learning curve, h'(y) plots,
and the paper-style comparison table (GBMPO, arXiv 2602.04380, section 5).

* ``mirror_mean.npz``: the ES mean, the result of the run (the reference's phi) and the map
  ``meta compare`` uses by default; ``mirror_best.npz``: the fittest single member seen
  (selection-biased; ``compare --carry best``). Keys v, w, b [126], a, c (scalars), float32,
  non-negative (through the adapter); load with ``objective.mirror_params_path=...``
  (`policy.load_mirror_params`).
* ``es_curve.png``: validation fitness of the mean candidate and of the best member per
  generation against the generation, population min..max shaded, mean +- std dashed.
* ``mirror_slope.png``: h'(y) for y in [1e-4, 1] (log axis) of the best and mean learned
  maps against the initial map (the ES starting point), and the same minus its value at
  y = 1e-4 (the part of the slope that shapes D).
"""

from __future__ import annotations

import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from gbmpo_jax.rl.divergences import mirror_potential, validate_mirror_params


def save_mirror(path, params: dict) -> pathlib.Path:
    host = {k: np.asarray(v, np.float32) for k, v in jax.device_get(params).items()}
    validate_mirror_params(host)
    path = pathlib.Path(path)
    np.savez(path, **host)
    return path


def slope(params: dict, y: np.ndarray) -> np.ndarray:
    """h'(y) by autodiff of the direct-form potential (float32)."""
    return np.asarray(_slope(jnp.asarray(y, jnp.float32), params))


_slope = jax.jit(jax.vmap(jax.grad(mirror_potential), in_axes=(0, None)))


def plot_curve(history: list[dict], out) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = np.array([h["generation"] for h in history])
    get = lambda k: np.array([h.get(k, np.nan) for h in history], float)  # noqa: E731
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.fill_between(g, get("es/fitness_min"), get("es/fitness_max"), alpha=0.2,
                    label="population min..max")  # fmt: skip
    mu, sd = get("es/fitness_mean"), get("es/fitness_std")
    ax.plot(g, mu, "--", color="C0", label="population mean")
    ax.fill_between(g, mu - sd, mu + sd, alpha=0.15, color="C0")
    ax.plot(g, get("es/fitness_max"), "o-", ms=3, color="C1", label="best member")
    if any("es/mean_fitness" in h for h in history):
        ax.plot(g, get("es/mean_fitness"), "s-", ms=3, color="C2", label="ES mean")
    ax.set_xlabel("ES generation")
    ax.set_ylabel("validation fitness (greedy accuracy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pathlib.Path(out)


def plot_slopes(maps: dict[str, dict], out) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.logspace(-4, 0, 200)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, params in maps.items():
        s = slope(params, y)
        axes[0].plot(y, s, label=name)
        axes[1].plot(y, s - s[0], label=name)
    axes[0].set_title("h'(y)", fontsize=9)
    axes[1].set_title("h'(y) - h'(1e-4)", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("token probability y")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pathlib.Path(out)


def write_outputs(workdir, history, adapter, best_z, mean_z, init_z) -> dict:
    workdir = pathlib.Path(workdir)
    best, mean, init = (adapter.to_params(z) for z in (best_z, mean_z, init_z))
    out = {
        "mirror_best": save_mirror(workdir / "mirror_best.npz", best),
        "mirror_mean": save_mirror(workdir / "mirror_mean.npz", mean),
        "slope_plot": plot_slopes(
            {"initial map": init, "ES mean": mean, "ES best": best}, workdir / "mirror_slope.png"
        ),  # fmt: skip
    }
    if history:
        out["curve"] = plot_curve(history, workdir / "es_curve.png")
    return out


def write_compare(workdir, rows: list[dict]) -> dict:
    """The comparison as `compare.md` (the markdown `table`) and `compare.png` (per method:
    mean +- std of the test accuracy, every seed as a dot) in ``workdir``; returns the paths.
    Rows carry ``accs`` (one test accuracy per seed) besides the `table` fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = pathlib.Path(workdir)
    md = workdir / "compare.md"
    md.write_text(table(rows) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, r in enumerate(rows):
        accs = 100 * np.asarray(r.get("accs", [r["acc_mean"]]), float)
        ax.bar(i, accs.mean(), yerr=accs.std(), capsize=6, color=f"C{i}", alpha=0.55)
        ax.scatter(np.full(accs.shape, i), accs, color="k", s=14, zorder=3)
    labels = [textwrap.fill(r["method"], 22) for r in rows]  # long names: several lines
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    lo = min(100 * min(r.get("accs", [r["acc_mean"]])) for r in rows)
    ax.set_ylim(max(0.0, lo - 10), None)
    ax.set_ylabel("test accuracy (%), mean +- std")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png = workdir / "compare.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {"table": md, "plot": png}


def table(rows: list[dict]) -> str:
    """Markdown table: method | test accuracy mean +- std (%) | mean response length (chars) |
    seeds | test problems scored."""
    lines = ["| method | test accuracy (%) | mean response length (chars) | seeds | problems |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} "
                     f"| {r['length_mean']:.1f} | {r['seeds']} | {r.get('test_problems', '')} |")  # fmt: skip
    return "\n".join(lines)
