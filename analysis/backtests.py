"""Backtests of a table: every budget held out in turn, fitted on the budgets below it, predicted.

Two laws are tested at each held-out budget:
* the frontier law (analysis.frontier_law): the budget's best loss, under each counting convention asked for;
* the joint law (analysis.extrapolation.check): every held-out cell, each with its 95% predictive interval, so the
  intervals' coverage can be counted over all backtests.

`scaling backtest RESULTS [RESULTS ...]` prints both as Markdown tables (docs/protocol.md holds ours).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from analysis import extrapolation, frontier_law
from analysis.isoflop import budgets
from analysis.table import COUNTS, Table, TableError, load

MIN_FIT_BUDGETS = 2


def _upto(t: Table, budget: pd.Series, limit: float) -> Table:
    return t.rows(t.df[budget <= limit])


def frontier_backtests(tables: dict[str, Table], n_boot: int = 200) -> pd.DataFrame:
    """One row per held-out budget: the frontier law fitted on the budgets below it, under each count."""
    rows = []
    for count, t in tables.items():
        b = budgets(t.df)
        levels = np.sort(b.unique())
        for j in range(MIN_FIT_BUDGETS, len(levels)):
            check = frontier_law.check(_upto(t, b, levels[j]), above_flops=None, n_boot=n_boot)
            if check is None:
                continue
            for r in check["rows"]:
                rows.append({"count": count, "held_out": j + 1, "fit_budgets": j, "loss": r["loss"],
                             "seeds": r["seeds"], "predicted": r["predicted"], "rel_error": r["rel_error"],
                             "inside": r["inside"], "low": r["predicted_low"], "high": r["predicted_high"],
                             "gamma": check["law"]["params"]["gamma"]["value"]})
    return pd.DataFrame(rows)


def cell_backtests(t: Table, n_boot: int = 200) -> pd.DataFrame:
    """One row per held-out run: the joint law fitted on the budgets below its budget, its 95% predictive interval
    and whether the run lies inside, with how wide the interval is against the error it had to cover."""
    b = budgets(t.df)
    levels = np.sort(b.unique())
    rows = []
    for j in range(MIN_FIT_BUDGETS, len(levels)):
        # every run of the budgets below is fitted: hold out by budget, not by raw C (a budget's runs differ by
        # up to 10% in C)
        fitted_max = float(t.df.loc[b <= levels[j - 1], "C"].max())
        check = extrapolation.check(_upto(t, b, levels[j]), above_flops=fitted_max, n_boot=n_boot)
        if check is None:
            continue
        for r in check["rows"]:
            lo, hi, loss, pred = r["predicted_low"], r["predicted_high"], r["loss"], r["predicted"]
            rows.append({"held_out": j + 1, "N": r["N"], "D": r["D"], "loss": loss, "predicted": pred,
                         "rel_error": r["rel_error"], "inside": r["inside"],
                         "half_width": float(np.log(hi / lo) / 2) if lo > 0 else np.inf,
                         "abs_log_error": float(abs(np.log(pred / loss))) if pred > 0 else np.inf})
    return pd.DataFrame(rows)


def coverage(cells: pd.DataFrame) -> dict:
    """How many held-out runs lie inside their 95% predictive intervals, and how much wider the intervals are than
    needed: every interval scaled by one factor would hold 95% of the runs at factor q95(|log error| / half-width),
    so too_wide = 1 / that (above 1: wider than needed; below 1: too narrow). Beside it, the median half-width
    against the 95th percentile of |log error|."""
    if cells.empty:
        return {"runs": 0}
    finite = np.isfinite(cells["half_width"])
    needed = float(np.quantile(cells["abs_log_error"], 0.95))
    scale = float(np.quantile(cells["abs_log_error"] / cells["half_width"], 0.95))
    return {"runs": len(cells), "inside": int(cells["inside"].sum()),
            "rate": float(cells["inside"].mean()), "too_wide": 1 / scale if scale > 0 else np.inf,
            "median_half_width": float(np.median(cells.loc[finite, "half_width"])) if finite.any() else np.inf,
            "needed_half_width": needed, "unbounded": int((~finite).sum())}


def distinct(cells: pd.DataFrame) -> pd.DataFrame:
    """Each held-out run once per budget held out: sweeps that share their first budgets repeat those backtests."""
    return cells.drop_duplicates(["held_out", "N", "D", "loss"])


def markdown(name: str, frontier: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    out = [f"### {name}", ""]
    if not frontier.empty:
        counts = list(dict.fromkeys(frontier["count"]))
        out += ["| held-out budget | fitted on | best loss (seeds) | " + " | ".join(
            f"error, C = {c}" for c in counts) + " |", "|---" * (3 + len(counts)) + "|"]
        for j, g in frontier.groupby("held_out"):
            first = g.iloc[0]
            cells_ = [f"{100 * r.rel_error:+.2f}%{'' if r.inside else ' (outside)'}"
                      for c in counts for r in g[g["count"] == c].itertuples()]
            out.append(f"| {j} | {int(first.fit_budgets)} budgets | {first.loss:.4f} ({int(first.seeds)}) | "
                       + " | ".join(cells_) + " |")
        out.append("")
        for c in counts:
            e = frontier.loc[frontier["count"] == c, "rel_error"].abs()
            out.append(f"- C = {c}: mean |error| {100 * e.mean():.2f}%, largest {100 * e.max():.2f}%.")
        out.append("")
    if not cells.empty:
        cov = coverage(cells)
        out += [f"Joint law, every held-out run: {cov['inside']} of {cov['runs']} inside their 95% predictive "
                f"intervals ({100 * cov['rate']:.0f}%), {cov['too_wide']:.2f}x as wide as needed for 95%; median "
                f"half-width {100 * cov['median_half_width']:.1f}% against {100 * cov['needed_half_width']:.1f}% "
                "that would cover 95% of them" + (f"; {cov['unbounded']} unbounded" if cov["unbounded"] else "")
                + ".", ""]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scaling backtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results folders or tables")
    p.add_argument("--count", action="append", choices=list(COUNTS),
                   help="counting convention(s) for the frontier law (default: each the table allows)")
    p.add_argument("--where", help="pandas query on each raw table first")
    p.add_argument("--n-boot", type=int, default=200)
    args = p.parse_args(argv)
    lines, all_cells = [], []
    try:
        for path in args.results:
            plain = load(path, where=args.where)
            counts = args.count or [c for c in COUNTS if f"C_{c}" in plain.df]
            tables = {c: load(path, where=args.where, count=c) for c in counts}
            cells = cell_backtests(next(iter(tables.values())), n_boot=args.n_boot)
            lines += markdown(path, frontier_backtests(tables, n_boot=args.n_boot), cells)
            all_cells.append(cells)
    except TableError as e:
        print(f"scaling backtest: {e}", file=sys.stderr)
        return 2
    cells = pd.concat(all_cells, ignore_index=True) if all_cells else pd.DataFrame()
    if len(args.results) > 1 and not cells.empty:
        cov = coverage(distinct(cells))
        lines.append(f"All tables, each held-out run once per budget held out: {cov['inside']} of {cov['runs']} "
                     f"inside their 95% predictive intervals ({100 * cov['rate']:.0f}%), {cov['too_wide']:.2f}x "
                     "as wide as needed for 95%.")
    print("\n".join(lines))
    return 0
