"""`scaling emergence RESULTS`: the emergence detector (analysis.emergence) over a table, as a printed table,
emergence.json, emergence.md (folded into report.md) and one figure per task.

Any table works: one row per model or checkpoint, scale columns, metric columns. Our own tables need no flags:
metrics are the `probe/<task>/<metric>` columns, their chance levels and item counts the `...@chance` and
`...@items` columns beside them, and the scale axes N and C. For a published table:

    scaling emergence evals.csv --axis params --metric "arithmetic/exact_match" --metric "arithmetic/logprob" \\
        --chance arithmetic/exact_match=0 --pair arithmetic/exact_match=arithmetic/logprob --group family
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from analysis import emergence as em
from analysis.curve_fits import sigmoid
from analysis.table import TableError, read_any, read_curves, results_folder

matplotlib.use("Agg")  # figures are files; no display is needed
import matplotlib.pyplot as plt

DEFAULT_AXES = ("N", "C")
TRANSITIONS = (*em.FLAGGED, "unresolved", "break", "metric artefact")  # verdicts shown with a threshold
LOGPROB_BASED = ("logprob", "icl_score", "loss", "nll", "cross_entropy")


def discover(df: pd.DataFrame) -> tuple[list[str], dict, dict, dict]:
    """Our probe columns: (metrics, chance, items, pairs). Each discontinuous metric pairs with its task's
    log-probability-based metric when there is one (the smooth measure Schaeffer et al. recommend), else with the
    task's first continuous metric."""
    metrics = [c for c in df.columns if c.startswith("probe/") and "@" not in c]
    chance = {c: float(df[f"{c}@chance"].dropna().iloc[0]) for c in metrics
              if f"{c}@chance" in df and df[f"{c}@chance"].notna().any()}
    items = {c: f"{c}@items" for c in metrics if f"{c}@items" in df}
    pairs = {}
    for c in metrics:
        task, name = c.rsplit("/", 1)
        if not any(k in name for k in em.CONTINUOUS):
            cont = [m for m in metrics if m.rsplit("/", 1)[0] == task and any(k in m.rsplit("/", 1)[1]
                                                                              for k in em.CONTINUOUS)]
            if cont:
                pairs[c] = min(cont, key=lambda m: m.rsplit("/", 1)[1] not in LOGPROB_BASED)
    return metrics, chance, items, pairs


def analyse_table(df: pd.DataFrame, metrics=None, axes=None, chance=None, pairs=None, group=None, items=None,
                  n_boot: int = 400, seed: int = 0, lower=()) -> list[dict]:
    found = discover(df)
    metrics = metrics or found[0]
    if not metrics:
        raise TableError("no metric columns: name them with --metric (our tables have probe/<task>/<metric> "
                         "columns when a sweep sets probes.tasks)")
    axes = axes or [a for a in DEFAULT_AXES if a in df]
    missing = [c for c in [*metrics, *axes, *([group] if group else []), *lower] if c not in df]
    if missing:
        raise TableError(f"columns not in the table: {missing}; it has: {list(df.columns)[:40]}")
    if "status" in df:
        df = df[df["status"] == "completed"]
    series = em.series_from_frame(df, metrics, axes, chance={**found[1], **(chance or {})},
                                  items={**found[2], **(items or {})}, pairs={**found[3], **(pairs or {})},
                                  group=group, lower=tuple(lower))
    return em.analyse(series, n_boot=n_boot, seed=seed)


def _fmt(v, spec=".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _cells(r: dict) -> tuple[str, str, str]:
    """(task [group], threshold with its interval where a transition was found, counterpart: verdict)."""
    thr = (f"{_fmt(r.get('threshold'))} [{_fmt(r.get('threshold_low'))}, {_fmt(r.get('threshold_high'))}]"
           if r["verdict"] in TRANSITIONS else "-")
    cp = f"{r['counterpart']}: {r['counterpart_verdict']}" if r.get("counterpart") else ""
    return r["task"] + (f" [{r['group']}]" if r.get("group") else ""), thr, cp


def table_lines(results: list[dict]) -> list[str]:
    head = (f"{'task':18} {'metric':15} {'axis':6} {'verdict':32} {'threshold [95%]':28} {'width':>6} "
            f"{'dBIC':>7} {'p':>6}  counterpart")
    out = [head]
    for r in results:
        name, thr, cp = _cells(r)
        out.append(f"{name:18} {r['metric']:15} {r['axis']:6} {r['verdict']:32} {thr:28} "
                   f"{_fmt(r.get('width_decades'), '.2f'):>6} {_fmt(r.get('delta_bic'), '.1f'):>7} "
                   f"{_fmt(r.get('p'), '.3f'):>6}  {cp}")
    return out


def markdown(results: list[dict], figures: list[Path], folder: Path) -> str:
    out = ["## Emergence", "",
           ("Each probe metric against each scale axis (analysis/emergence.py): sigmoid vs smooth fit by BIC under "
            "Student-t errors, tested against the smooth form by a parametric bootstrap, Holm-corrected over the "
            "tests of each view; `emergent` also needs the sigmoid to win in 90% of case resamples, the points "
            "before the transition at chance, two points above it significantly above chance and a 10-90% width "
            "under one decade. `gradual emergence` (also flagged): the same rise from a floor over one to 2.5 "
            "decades, won by the sigmoid by delta-BIC >= 10. "
            "`metric artefact`: the discontinuous metric jumps but its continuous counterpart does not.")]
    views = {"runs": "Across runs (final values)",
             "checkpoints": "Over training (every evaluation point of the runs trained on probe text; C = 6 N x "
                            "tokens seen so far)"}
    for view, title in views.items():
        rs = [r for r in results if r.get("view", "runs") == view]
        if not rs:
            continue
        out += ["", f"### {title}", "",
                ("| task | metric | axis | verdict | threshold [95%] | width (decades) | delta-BIC | p | "
                 "breakthroughness | continuous counterpart |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            name, thr, cp = _cells(r)
            out.append(f"| {name} | {r['metric']} | {r['axis']} | {r['verdict']} | {thr} | "
                       f"{_fmt(r.get('width_decades'), '.2f')} | {_fmt(r.get('delta_bic'), '.1f')} | "
                       f"{_fmt(r.get('p'), '.3f')} | {_fmt(r.get('breakthroughness'), '.2f')} | {cp or '-'} |")
    out += [""] + [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures]
    return "\n".join(out) + "\n"


def figures(df: pd.DataFrame, results: list[dict], folder: Path, fmt: str = "png", group: str | None = None,
            name: str = "emergence") -> list[Path]:
    """Per task and axis: each metric against scale (one colour per group, if any) with its fitted sigmoid and,
    where a transition is found, its threshold and 95% band; the continuous counterparts beside the
    discontinuous ones."""
    if "status" in df:
        df = df[df["status"] == "completed"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    keys = sorted({(r["task"], r["axis"]) for r in results if r["verdict"] != "too few points"})
    for task, axis in keys:
        rs = [r for r in results if r["task"] == task and r["axis"] == axis]
        metrics = list(dict.fromkeys(r["metric"] for r in rs))
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            col = next((c for c in df.columns if c.endswith(f"{task}/{metric}") or c == metric), None)
            if col is None:
                continue
            verdicts = []
            for i, r in enumerate(r for r in rs if r["metric"] == metric):
                d = df if r.get("group") is None or group is None else df[df[group].astype(str) == r["group"]]
                colour = f"C{i % 10}" if r.get("group") is not None else "k"
                x = pd.to_numeric(d[axis], errors="coerce").to_numpy(float)
                y = pd.to_numeric(d[col], errors="coerce").to_numpy(float)
                ax.scatter(x, y, s=12, color=colour, zorder=3, label=r.get("group"))
                verdicts.append(r["verdict"] if r.get("group") is None else f"{r['group']}: {r['verdict']}")
                if "fit" not in r or axis == "loss" or not np.isfinite(x).any():
                    continue
                grid = np.linspace(np.nanmin(np.log10(x)), np.nanmax(np.log10(x)), 200)
                lo, hi = r["fit"]["normalise"]
                sign = 1 if r["fit"]["higher_is_better"] else -1
                u = sigmoid(r["fit"]["sigmoid"], grid)
                ax.plot(10**grid, sign * (lo + u * (hi - lo)), color="C3" if colour == "k" else colour, lw=1)
                if r["verdict"] in TRANSITIONS:
                    ax.axvspan(r["threshold_low"], r["threshold_high"], color="C3", alpha=0.12)
                    ax.axvline(r["threshold"], color="C3", lw=0.8, ls="--")
            if axis != "loss":
                ax.set_xscale("log")
            chance = df.get(f"{col}@chance")
            if chance is not None and chance.notna().any():
                ax.axhline(float(chance.dropna().iloc[0]), color="0.5", lw=0.8, ls=":")
            ax.set_title(f"{metric}\n" + "; ".join(verdicts), fontsize=7)
            ax.set_xlabel(axis)
            ax.grid(alpha=0.3)
        if group is not None:
            axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{task} vs {axis}" + (f" ({name.replace('_', ' ')})" if name != "emergence" else ""),
                     fontsize=10)
        fig.tight_layout()
        path = folder / f"{name}_{_safe_name(task)}_{_safe_name(axis)}.{fmt}"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in str(text))


def checkpoint_table(runs: pd.DataFrame, folder: Path) -> pd.DataFrame | None:
    """The over-training view of a results folder (`runs`: its runs table): every evaluation point of the completed
    runs that trained on probe text, one row per checkpoint (C = 6 N x tokens seen so far), labelled by run in the
    column `run`. An ability learned during
    training shows its threshold here, at the compute where the run acquired it (the induction-head phase change
    of Olsson et al. 2022 is one). None when no run trained on probes (eval-only probes have nothing to learn)."""
    curves_path = folder / "curves.parquet"
    if not curves_path.exists():
        return None
    if "probe_train_fraction" not in runs or "status" not in runs:
        return None
    trained = runs[(runs["status"] == "completed") & (runs["probe_train_fraction"].fillna(0) > 0)].copy()
    if trained.empty:
        return None
    label = trained["model"].astype(str)
    if label.duplicated().any():
        label = label + " " + trained["run_id"].str[:6]
    trained["run"] = label
    meta = ["run_id", "run", *[c for c in runs.columns if c.startswith("probe/") and "@" in c]]
    curves = read_curves(folder).drop(columns=["model"], errors="ignore")
    return curves.merge(trained[meta], on="run_id", how="inner")


@dataclass
class Emergence:
    """What the detector found in one table: the results, the figures written and the markdown section."""
    results: list[dict]
    figures: list[Path]
    markdown: str


def analyse_folder(path: str | Path, n_boot: int = 400, fmt: str = "png", **kw) -> Emergence | None:
    """Write emergence.json, emergence.md and figures beside the table; None when it has no probe metrics.
    For our results folders with runs trained on probe text, the over-training view is analysed as well (its own
    family of tests, Holm-corrected on its own)."""
    df = read_any(path)
    if not kw.get("metrics") and not discover(df)[0]:
        return None
    results = analyse_table(df, n_boot=n_boot, **kw)
    for r in results:
        r["view"] = "runs"
    folder = results_folder(path)
    figs = figures(df, results, folder / "plots", fmt, group=kw.get("group"))
    ck = checkpoint_table(df, folder) if not kw.get("metrics") and Path(path).is_dir() else None
    if ck is not None:
        over = analyse_table(ck, axes=["C"], group="run", n_boot=n_boot)
        for r in over:
            r["view"] = "checkpoints"
        figs += figures(ck, over, folder / "plots", fmt, group="run", name="emergence_over_training")
        results += over
    (folder / "emergence.json").write_text(json.dumps({"n_boot": n_boot, "results": results}, indent=1,
                                                      default=_plain))
    text = markdown(results, figs, folder)
    (folder / "emergence.md").write_text(text)
    return Emergence(results, figs, text)


def build(path: str | Path, n_boot: int = 400, fmt: str = "png", quiet: bool = True, **kw) -> list[dict] | None:
    """analyse_folder, printing the table unless quiet; returns the results."""
    found = analyse_folder(path, n_boot, fmt, **kw)
    if found is not None and not quiet:
        print("\n".join(table_lines(found.results)))
        folder = results_folder(path)
        print(f"\nwrote {folder / 'emergence.json'}, {folder / 'emergence.md'} and {len(found.figures)} figures")
    return None if found is None else found.results


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
