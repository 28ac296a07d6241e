"""Figures from a table and its fits: one function per figure, each returning a matplotlib Figure.

Log axes, units in labels, legends. Colour encodes model size N throughout.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import NullFormatter, ScalarFormatter

from analysis import laws
from analysis.fit import Analysis
from analysis.isoflop import budgets

LABELS = {"N": "N, non-embedding parameters", "D": "D, training tokens", "C": "C = 6ND, FLOPs",
          "tokens_seen": "tokens seen"}


def _loss_label(result) -> str:
    return f"loss ({result.table.loss_unit})"


def _size_colors(values):
    norm = LogNorm(vmin=min(values), vmax=max(values) * 1.0001)
    return plt.get_cmap("viridis"), norm


def _tidy(ax, loss_axis: bool = True):
    """Plain numbers on a log loss axis, no crowded minor labels on a log x axis, a light grid."""
    if loss_axis and ax.get_yscale() == "log":
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def _colorbar(fig, ax, cmap, norm):
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=LABELS["N"])


def loss_curves(t) -> plt.Figure | None:
    c = t.curves
    if c is None or not len(c):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap, norm = _size_colors(c["N"].unique())
    for _, g in c.groupby("run_id"):
        g = g.sort_values("tokens_seen")
        ax.plot(g["tokens_seen"], g["eval_loss"], color=cmap(norm(g["N"].iloc[0])), lw=1.2, alpha=0.85)
    ax.set(xscale="log", yscale="log", xlabel=LABELS["tokens_seen"], ylabel=f"eval loss ({t.loss_unit})",
           title="Learning curves")
    _colorbar(fig, ax, cmap, norm)
    _tidy(ax)
    return fig


def loss_vs(result: Analysis, x: str) -> plt.Figure:
    t = result.table
    df = t.df
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap, norm = _size_colors(df["N"].unique())
    ax.scatter(df[x], df["loss"], c=[cmap(norm(n)) for n in df["N"]], s=28, edgecolor="k", lw=0.4, zorder=3,
               label="runs")
    grid = np.geomspace(df[x].min() / 1.5, df[x].max() * 3, 200)
    f = result.forms.get(f"L({x})")
    if f is not None:
        p = {k: v["value"] for k, v in f.params.items()}
        ax.plot(grid, f.predict(grid), "k--", lw=1.3,
                label=f"envelope fit: {p['E']:.3g} + {p['A']:.3g}·{x}^-{p['alpha']:.3f}")
        if f.samples:
            s = f.samples
            with np.errstate(all="ignore"):
                band = s["E"][:, None] + s["A"][:, None] * grid[None] ** -s["alpha"][:, None]
            lo, hi = np.nanpercentile(band, [2.5, 97.5], axis=0)
            ax.fill_between(grid, lo, hi, color="k", alpha=0.12, label="95% band")
    chin = result.forms.get("chinchilla")
    if chin is not None and x == "D":
        for n in sorted(df["N"].unique()):
            ax.plot(grid, chin.predict(n, grid), color=cmap(norm(n)), lw=1, alpha=0.8)
        ax.plot([], [], color="gray", lw=1, label="joint law L(N, D) per N")
    ax.set(xscale="log", yscale="log", xlabel=LABELS[x], ylabel=_loss_label(result), title=f"Loss against {x}")
    _colorbar(fig, ax, cmap, norm)
    ax.legend(fontsize=8)
    _tidy(ax)
    return fig


def isoflop_profiles(result: Analysis) -> plt.Figure | None:
    if "isoflop_parabola" not in result.forms:
        return None
    df = result.table.df.copy()
    df = df[df["budget"].notna()] if "budget" in df else df
    df["b"] = budgets(df)
    minima = result.extra["isoflop_parabola"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("plasma")
    bs = sorted(df["b"].unique())
    for i, b in enumerate(bs):
        g = df[df["b"] == b].sort_values("N")
        col = cmap(i / max(1, len(bs) - 1))
        ax.scatter(g["N"], g["loss"], color=col, s=22, zorder=3)
        if len(g) >= 3:
            c2, c1, c0 = np.polyfit(np.log(g["N"]), g["loss"], 2)
            xs = np.geomspace(g["N"].min(), g["N"].max(), 100)
            ax.plot(xs, c2 * np.log(xs) ** 2 + c1 * np.log(xs) + c0, color=col, lw=1, label=f"C = {b:.2g}")
    for _, r in minima.iterrows():
        ax.axvline(r["N_opt"], color="gray", lw=0.5, ls=":")
    ax.set(xscale="log", xlabel=LABELS["N"], ylabel=_loss_label(result), title="IsoFLOP profiles (dotted: fitted minima)")
    ax.legend(fontsize=8)
    _tidy(ax)
    return fig


def optimal_allocation(result: Analysis) -> plt.Figure | None:
    chin, df = result.forms.get("chinchilla"), result.table.df
    if chin is None:
        return None
    C = np.geomspace(df["C"].min(), df["C"].max() * 1000, 100)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    opt = laws.optimal(chin, C)
    band = laws.optimal(chin, C[:, None], samples=True) if chin.samples else None
    unknown = "a" in chin.not_identified  # no allocation line the data cannot support
    for ax, key, label in ((axes[0], "N_opt", LABELS["N"]), (axes[1], "D_opt", LABELS["D"])):
        if not unknown:
            ax.plot(C, opt[key], "k-", label="Approach 3 (joint law)")
        if band is not None and not unknown:
            lo, hi = np.nanpercentile(band[key], [2.5, 97.5], axis=1)
            ax.fill_between(C, lo, hi, color="k", alpha=0.12)
        if "frontier" in result.extra:
            f = result.extra["frontier"]
            ax.scatter(f["C"], f["N" if key == "N_opt" else "D"], color="tab:orange", s=18,
                       label="compute frontier (Approach 1)", zorder=3)
        if "isoflop_parabola" in result.extra:
            m = result.extra["isoflop_parabola"]
            ax.scatter(m["C"], m[key], color="tab:blue", marker="s", s=24, label="IsoFLOP minima (Approach 2)",
                       zorder=3)
        ax.axvspan(df["C"].min(), df["C"].max(), color="tab:green", alpha=0.07, label="sweep range")
        ax.set(xscale="log", yscale="log", xlabel=LABELS["C"], ylabel=label,
               title=f"Compute-optimal {key}" + (" (Approach 3: not identified)" if unknown else ""))
        _tidy(ax, loss_axis=False)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def residuals(result: Analysis) -> plt.Figure | None:
    chin, df = result.forms.get("chinchilla"), result.table.df
    if chin is None:
        return None
    rel = (chin.predict(df["N"], df["D"]) - df["loss"]) / df["loss"]
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap, norm = _size_colors(df["N"].unique())
    ax.scatter(df["C"], 100 * rel, c=[cmap(norm(n)) for n in df["N"]], s=28, edgecolor="k", lw=0.4,
               label="in-sample (all runs)")
    e = result.extrapolation
    if e:
        ax.scatter([r["C"] for r in e["rows"]], [100 * r["rel_error"] for r in e["rows"]], marker="x",
                   color="red", s=50, label=f"held out ({e['holdout']})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel=LABELS["C"], ylabel="(predicted - observed) / observed, %",
           title="Joint-law residuals")
    _colorbar(fig, ax, cmap, norm)
    ax.legend(fontsize=8)
    _tidy(ax)
    return fig


def extrapolation(result: Analysis) -> plt.Figure | None:
    """The law fitted without the held-out runs, and the held-out runs against it with their 95% predictive
    intervals: per IsoFLOP budget against N when the table has budgets, else against C."""
    e = result.extrapolation
    if not e:
        return None
    df, held = result.table.df, pd.DataFrame(e["rows"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    is_held = df.set_index(["N", "D"]).index.isin(held.set_index(["N", "D"]).index)
    if "budget" in df and df["budget"].notna().all():
        x, cmap = "N", plt.get_cmap("plasma")
        label = budgets(df)
        bs = sorted(label.unique())
        for i, b in enumerate(bs):
            mine = (label == b).to_numpy()
            g = df[mine]
            col = cmap(i / max(1, len(bs) - 1))
            ns = np.geomspace(g["N"].min(), g["N"].max(), 100)  # the law where it was sampled, not beyond
            out = bool(is_held[mine].all())  # what --holdout-above-flops or --holdout-top held out, too
            ax.plot(ns, laws.chinchilla_loss(e["fit"], ns, b / (6 * ns)), color="red" if out else col, lw=1,
                    ls="--" if out else "-", label=f"C = {b:.2g}" + (" (held out)" if out else ""))
            ax.scatter(g["N"], g["loss"], color=col, s=22, zorder=3)
    else:
        x = "C"
        ax.scatter(df["C"][~is_held], df["loss"][~is_held], color="k", s=22, zorder=3, label="fitted runs")
    ax.errorbar(held[x], held["predicted"], yerr=[held["predicted"] - held["predicted_low"],
                                                  held["predicted_high"] - held["predicted"]],
                fmt="none", ecolor="red", capsize=3, lw=1, zorder=2, label="95% predictive interval")
    ax.scatter(held[x], held["loss"], marker="*", s=90, color="red", edgecolor="k", lw=0.5, zorder=4,
               label=f"held out: max error {100 * e['max_abs_rel_error']:.1f}%")
    seen = np.concatenate([df["loss"], held["predicted_low"], held["predicted_high"]])
    seen = seen[np.isfinite(seen)]
    ax.set(xscale="log", yscale="log", xlabel=LABELS[x], ylabel=_loss_label(result), ylim=(seen.min() / 1.05, seen.max() * 1.05),
           title=f"Joint law fitted on {e['n_fit']} runs, predicting {len(held)} held-out runs")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _tidy(ax)
    return fig


def all_figures(result: Analysis, folder: Path, fmt: str = "png") -> list[Path]:
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"figure format must be png, svg or pdf, got {fmt!r}")
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"loss_curves": loss_curves(result.table), "loss_vs_N": loss_vs(result, "N"),
               "loss_vs_D": loss_vs(result, "D"), "loss_vs_C": loss_vs(result, "C"),
               "isoflop": isoflop_profiles(result), "optimal_allocation": optimal_allocation(result),
               "residuals": residuals(result), "extrapolation": extrapolation(result)}
    written = []
    for name, fig in figures.items():
        if fig is None:
            continue
        path = folder / f"{name}.{fmt}"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
