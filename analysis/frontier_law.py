"""The frontier law: the best loss reachable at each compute budget, and what the next budgets will reach.

What a user of a small grid most wants is the loss the next budget reaches at its best size. The law is fitted to
the best loss of each budget of the table:

    L*(C) = E + A C^-gamma      where it has been tested: 5 budgets or more, and its backtests beat the pure law's
    L*(C) = A C^-gamma          otherwise

A budget's best loss is its lowest cell mean: a cell is the runs equal in every design column (N, D, U,
schedule, group), its loss the geometric mean over its seeds. C is that cell's compute, counted as the table's
frontier_count says: 6 N_total D where the table has N_total and no --count was given (it predicted the next
budget best in the backtests of docs/protocol.md), else the table's count (analysis.table.COUNTS). Budgets are
the IsoFLOP budgets of analysis.isoflop.

Uncertainty, all in log loss:
* noise of a best loss: the pooled seed sd of replicate cells (analysis.extrapolation.seed_noise) over the square
  root of the cell's seeds; without replicates, the fit's residual sd where it has degrees of freedom.
* parameters: a parametric bootstrap: every budget's best log loss redrawn with its noise, the law refitted.
* predictive (one budget's best loss, measured with k seeds at its best cell): the bootstrap times exp(eps),
  eps ~ Normal(0, noise^2 / k + (drift x decades)^2), where decades is the distance in log10 C outside the fitted
  budgets, below the smallest as well as above the largest, and the drift per decade comes from backtests of the
  law on the fitted budgets alone (fit the first j, predict each later one): the median over backtest predictions
  of max(0, e^2 - noise^2) / decades^2, so one runaway backtest cannot make every interval unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis import laws, lse
from analysis.extrapolation import DESIGN, seed_noise
from analysis.isoflop import budgets
from analysis.table import COUNTS, Table

MIN_BUDGETS = 2  # a power law through two budgets predicts the third; fewer say nothing
MIN_BUDGETS_FOR_E = 4  # E + A C^-gamma has three parameters: at least one budget more to test them
# The drift of a law fitted on two budgets, which cannot backtest itself: the median of the 16 distinct drifts the
# backtests of our committed sweeps measured (0 to 16% per decade; docs/protocol.md, "The frontier law")
ASSUMED_DRIFT = 0.10
E_STARTS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95)  # E as a fraction of the lowest best loss
N_BOOT = 400


@dataclass(kw_only=True)
class FrontierLaw:
    points: pd.DataFrame  # the budgets fitted: rows of best_per_budget with 2 or more sizes
    saturating: bool  # E + A C^-gamma, else A C^-gamma
    params: dict  # name -> {"value", "ci_low", "ci_high"}
    noise: float  # seed sd of one run's log loss
    noise_source: str
    drift_per_decade: float
    drift_assumed: bool  # ASSUMED_DRIFT: too few budgets to backtest
    backtests: list[dict]  # {"fit_budgets", "C", "loss", "predicted", "rel_error", "decades"}
    count: str
    theta: np.ndarray = field(repr=False)  # (log A, gamma[, log E])
    samples: np.ndarray = field(repr=False)  # bootstrap thetas
    why_power: str | None = None  # why E was left out, when it was

    def predict(self, C) -> np.ndarray | float:
        c = np.asarray(C, float)
        out = np.exp(_log_law(self.theta, np.log(np.atleast_1d(c)), self.saturating))
        return out if c.ndim else float(out[0])

    def decades_outside(self, C) -> np.ndarray:
        logc, fitted = np.log10(np.asarray(C, float)), np.log10(self.points["C"].to_numpy(float))
        return np.maximum(0.0, np.maximum(logc - fitted.max(), fitted.min() - logc))

    def interval(self, C: float, seeds: int = 1, predictive: bool = True, seed: int = 0) -> tuple[float, float]:
        """95% interval of the best loss at C: of the law (predictive=False), or of a budget's measured best loss
        with `seeds` runs at its best cell."""
        log_pred = _log_law(self.samples, np.full(1, np.log(C)), self.saturating, batched=True)[:, 0]
        log_pred = log_pred[np.isfinite(log_pred)]
        if not len(log_pred):
            return float("nan"), float("nan")
        sd = float(np.hypot(self.noise / np.sqrt(seeds), self.drift_per_decade * self.decades_outside(C))) \
            if predictive else 0.0
        lo, hi = laws.noisy_interval(np.exp(log_pred), sd, seed)
        return float(lo), float(hi)

    def formula(self) -> str:
        return "L*(C) = E + A * C^-gamma" if self.saturating else "L*(C) = A * C^-gamma"

    def to_json(self) -> dict:
        return {"formula": self.formula(), "count": self.count, "params": self.params, "noise": self.noise,
                "noise_source": self.noise_source, "drift_per_decade": self.drift_per_decade,
                "drift_assumed": self.drift_assumed,
                "backtests": self.backtests, "why_power": self.why_power,
                "points": self.points.to_dict("records")}


def _log_law(theta, logc, saturating: bool, batched: bool = False) -> np.ndarray:
    th = np.atleast_2d(theta) if batched else np.asarray(theta, float)[None]
    power = th[:, [0]] - th[:, [1]] * logc[None]
    out = np.logaddexp(power, th[:, [2]]) if saturating else power
    return out if batched else out[0]


def best_per_budget(t: Table) -> pd.DataFrame:
    """Each budget's best cell: budget (compute of the budget), C (the cell's own, as counted), N, D, loss (the
    geometric mean over the cell's seeds), seeds, bracketed: whether the budget has a smaller and a larger size
    than its best (if not, its optimum lies outside the sizes sampled and its best loss is only an upper bound), and
    sizes: how many distinct N the budget sampled."""
    df = t.df.assign(budget_C=budgets(t.df), log_loss=np.log(t.df["loss"].to_numpy(float)),
                     C_counted=t.df[f"C_{t.frontier_count}"] if f"C_{t.frontier_count}" in t.df else t.df["C"])
    design = [c for c in DESIGN if c in df and c != "budget"]  # budget_C stands for it
    cells = df.groupby(["budget_C", *design], sort=True, dropna=False).agg(
        C=("C_counted", "mean"), log_loss=("log_loss", "mean"), seeds=("log_loss", "size")).reset_index()
    best = cells.loc[cells.groupby("budget_C")["log_loss"].idxmin()].sort_values("budget_C")
    sizes = cells.groupby("budget_C")["N"].agg(["min", "max", "nunique"])
    bracketed = [sizes.loc[b, "min"] < n < sizes.loc[b, "max"] for b, n in zip(best["budget_C"], best["N"])]
    return pd.DataFrame({"budget": best["budget_C"].to_numpy(), "C": best["C"].to_numpy(),
                         "N": best["N"].to_numpy(), "D": best["D"].to_numpy(),
                         "loss": np.exp(best["log_loss"].to_numpy()), "seeds": best["seeds"].to_numpy(),
                         "bracketed": np.array(bracketed, bool),
                         "sizes": sizes.loc[best["budget_C"], "nunique"].to_numpy()})


def bracketing_warning(points: pd.DataFrame) -> str | None:
    """A warning naming the budgets whose best run is at the edge of their sizes, or None."""
    edge = points[~points["bracketed"]]
    if edge.empty:
        return None
    return (f"{len(edge)} of {len(points)} budgets have their best run at the edge of the sizes they sampled (C = "
            + ", ".join(f"{c:.3g} at N = {n:.3g}" for c, n in zip(edge["budget"], edge["N"]))
            + "): their optimum was not sampled, so their best loss is only an upper bound and the frontier "
              "through them is biased; sample sizes on both sides of each budget's best")


def _fit_theta(logc, y, w, saturating: bool) -> np.ndarray:
    """Weighted least squares in log loss; the saturating law from several starts of E."""
    if not saturating:
        coef = np.polyfit(logc, y, 1, w=w)
        return np.array([coef[1], -coef[0]])
    best, best_cost = None, np.inf
    for frac in E_STARTS:
        e0 = np.log(max(frac, 1e-3) * np.exp(y.min()))
        resid = np.log(np.maximum(np.exp(y) - np.exp(e0), 1e-12 * np.exp(y)))
        slope, icpt = np.polyfit(logc, resid, 1)
        start = np.array([icpt, max(-slope, 1e-3), e0])
        try:
            r = least_squares(lambda th: w * (_log_law(th, logc, True) - y), start, method="lm", max_nfev=2000)
        except ValueError:
            continue
        if np.all(np.isfinite(r.x)) and r.cost < best_cost:
            best, best_cost = r.x, r.cost
    if best is None:
        raise ValueError("the saturating frontier law did not converge from any start")
    return best


def _summary(theta, samples, saturating: bool) -> dict:
    def natural(th):
        th = np.atleast_2d(th)
        out = {"A": np.exp(th[:, 0]), "gamma": th[:, 1]}
        if saturating:
            out["E"] = np.exp(th[:, 2])
        return out

    point, boot = natural(theta), natural(samples)
    return {k: {"value": float(point[k][0]), **dict(zip(("ci_low", "ci_high"), lse.interval(boot[k])))}
            for k in point}


def _noise(t: Table, points: pd.DataFrame) -> tuple[float, str]:
    replicates = seed_noise(t.df)
    if replicates:
        return replicates["rel_sd"], (f"seed noise {100 * replicates['rel_sd']:.2f}% of one run's loss, pooled "
                                      f"over {replicates['cells']} replicated cells")
    if len(points) > 2:
        logc, y = np.log(points["C"].to_numpy(float)), np.log(points["loss"].to_numpy(float))
        r = _log_law(_fit_theta(logc, y, np.ones(len(y)), False), logc, False) - y
        sd = float(np.sqrt((r ** 2).sum() / (len(r) - 2)))
        return sd, f"no seed replicates: the power law's residual sd, {100 * sd:.2f}%"
    return 0.0, "no seed replicates and no degrees of freedom: the noise is unknown and left out"


def _drift(points: pd.DataFrame, noise: float, saturating: bool) -> tuple[float, list[dict]]:
    """Backtests on the fitted budgets: fit the first j (the pure power law, and the saturating one where it has
    budgets enough), predict every later budget."""
    logc, y = np.log(points["C"].to_numpy(float)), np.log(points["loss"].to_numpy(float))
    w = np.sqrt(points["seeds"].to_numpy(float))
    rows = []
    for j in range(MIN_BUDGETS, len(points)):
        sat = saturating and j >= MIN_BUDGETS_FOR_E
        theta = _fit_theta(logc[:j], y[:j], w[:j], sat)
        for i in range(j, len(points)):
            pred = float(np.exp(_log_law(theta, logc[[i]], sat)[0]))
            rows.append({"fit_budgets": j, "C": float(points["C"].iloc[i]), "loss": float(points["loss"].iloc[i]),
                         "seeds": int(points["seeds"].iloc[i]),
                         "predicted": pred, "rel_error": pred / float(points["loss"].iloc[i]) - 1,
                         "decades": float((logc[i] - logc[j - 1]) / np.log(10))})
    far = [r for r in rows if r["decades"] >= 0.1 and np.isfinite(r["predicted"])]
    if not far:
        return (ASSUMED_DRIFT if not rows else 0.0), rows
    per_decade = [max(0.0, np.log1p(r["rel_error"]) ** 2 - noise ** 2 / r["seeds"]) / r["decades"] ** 2
                  for r in far]
    return float(np.sqrt(np.median(per_decade))), rows


def _choose_form(points: pd.DataFrame, noise: float, saturating: bool | None) -> tuple[bool, str | None]:
    """(saturating, why not): E + A C^-gamma only where it has been tested and won: at least MIN_BUDGETS_FOR_E + 1
    budgets, and its backtests (fitted on MIN_BUDGETS_FOR_E budgets or more) closer than the pure law's on the same
    predictions. A flat stretch of a few budgets fits E well and then predicts the next budget badly."""
    if saturating is not None:
        return saturating, None if saturating else "asked for the pure power law"
    if len(points) < MIN_BUDGETS_FOR_E + 1:
        return False, (f"{len(points)} budgets: E + A C^-gamma is used only where its backtests can be compared "
                       f"with the pure law's (at least {MIN_BUDGETS_FOR_E + 1} budgets)")
    _, sat_rows = _drift(points, noise, True)
    _, pow_rows = _drift(points, noise, False)
    tested = [i for i, r in enumerate(sat_rows) if r["fit_budgets"] >= MIN_BUDGETS_FOR_E]
    sat_err = np.median([abs(np.log1p(sat_rows[i]["rel_error"])) for i in tested])
    pow_err = np.median([abs(np.log1p(pow_rows[i]["rel_error"])) for i in tested])
    if sat_err < pow_err:
        return True, None
    return False, (f"in backtests E + A C^-gamma missed by {100 * sat_err:.1f}% (median), the pure power law by "
                   f"{100 * pow_err:.1f}%")


def fit(t: Table, n_boot: int = N_BOOT, seed: int = 0, saturating: bool | None = None,
        noise: tuple[float, str] | None = None) -> FrontierLaw:
    """The frontier law of a table (ValueError when it has fewer than MIN_BUDGETS budgets). noise: (seed sd of one
    run's log loss, where it comes from), when measured on other runs than these (a held-out budget's seeds)."""
    every = best_per_budget(t)
    points = every[every["sizes"] >= 2].reset_index(drop=True)  # one run per budget is not a frontier point
    if len(points) < MIN_BUDGETS:
        raise ValueError(f"the frontier law needs at least {MIN_BUDGETS} compute budgets of 2 or more sizes each; the "
                         f"table has {len(points)}")
    noise, noise_source = noise if noise is not None else _noise(t, points)
    logc, y = np.log(points["C"].to_numpy(float)), np.log(points["loss"].to_numpy(float))
    sd = noise / np.sqrt(points["seeds"].to_numpy(float)) if noise > 0 else np.full(len(y), 1e-3)
    sat, why = _choose_form(points, noise, saturating)
    theta = _fit_theta(logc, y, 1 / sd, sat)
    draws = y[None] + sd[None] * np.random.default_rng(seed).standard_normal((n_boot, len(y)))
    samples = np.array([_fit_theta(logc, d, 1 / sd, sat) for d in draws]) if n_boot else theta[None]
    drift, backtests = _drift(points, noise, sat)
    return FrontierLaw(points=points, saturating=sat,
                       params=_summary(theta, samples, sat), noise=noise, noise_source=noise_source,
                       drift_per_decade=drift, drift_assumed=not backtests, backtests=backtests,
                       count=t.frontier_count, theta=theta, samples=samples, why_power=why)


def predictions(law: FrontierLaw, points: pd.DataFrame, seed: int = 0) -> list[dict]:
    """The law's prediction of each budget's measured best loss (points: best_per_budget rows), with the 95%
    interval of the law and the predictive one for that many seeds."""
    out = []
    for i, r in enumerate(points.itertuples()):
        predicted = float(law.predict(r.C))
        lo, hi = law.interval(r.C, seeds=r.seeds, seed=seed + i)
        p_lo, p_hi = law.interval(r.C, predictive=False)
        out.append({"budget": float(r.budget), "C": float(r.C), "N": float(r.N), "D": float(r.D),
                    "loss": float(r.loss), "seeds": int(r.seeds), "bracketed": bool(r.bracketed),
                    "predicted": predicted, "rel_error": predicted / float(r.loss) - 1,
                    "predicted_low": lo, "predicted_high": hi, "parameter_low": p_lo, "parameter_high": p_hi,
                    "inside": bool(lo <= r.loss <= hi)})
    return out


def beyond(law: FrontierLaw, multiples=(10, 100), seed: int = 0) -> list[dict]:
    """The best loss one run should reach at multiples of the largest budget's compute."""
    c_max = float(law.points["C"].max())
    out = []
    for m in multiples:
        lo, hi = law.interval(c_max * m, seed=seed + m)
        p_lo, p_hi = law.interval(c_max * m, predictive=False)
        out.append({"C": c_max * m, "loss": float(law.predict(c_max * m)), "loss_low": p_lo, "loss_high": p_hi,
                    "loss_predictive_low": lo, "loss_predictive_high": hi})
    return out


def check(t: Table, above_flops=None, top_k=None, n_boot: int = N_BOOT, seed: int = 0) -> dict | None:
    """Fit the frontier law without the held-out runs (analysis.extrapolation.holdout_split) and predict the best
    loss of each held-out budget; the noise is the seed noise of the whole table, held-out replicates included."""
    from analysis.extrapolation import holdout_split  # the same split as the joint law's check

    fit_t, held, label = holdout_split(t, above_flops, top_k)
    if len(held) == 0 or (best_per_budget(fit_t)["sizes"] >= 2).sum() < MIN_BUDGETS:
        return None
    whole = best_per_budget(t)
    law = fit(fit_t, n_boot=n_boot, seed=seed, noise=_noise(t, whole))
    held_points = best_per_budget(t.rows(held))
    rows = predictions(law, held_points, seed=seed)
    return {"holdout": label, "law": law.to_json(), "rows": rows,
            "max_abs_rel_error": float(np.max(np.abs([r["rel_error"] for r in rows]))),
            "inside": sum(r["inside"] for r in rows)}


def analyse(t: Table, above_flops=None, top_k=None, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The frontier law of the whole table, its check on held-out budgets and its best losses beyond the sweep,
    as fit.json's "frontier_law" (ValueError when the table has too few budgets)."""
    law = fit(t, n_boot=n_boot, seed=seed)
    warning = bracketing_warning(law.points)
    return {**law.to_json(), "beyond": beyond(law, seed=seed),
            "check": check(t, above_flops, top_k, n_boot=n_boot, seed=seed),
            "warnings": [warning] if warning else []}


def params(doc: dict) -> str:
    p = doc["params"]
    out = [f"gamma = {p['gamma']['value']:.3f} [{p['gamma']['ci_low']:.3f}, {p['gamma']['ci_high']:.3f}]"]
    if "E" in p:
        out.append(f"E = {p['E']['value']:.3g} [{p['E']['ci_low']:.3g}, {p['E']['ci_high']:.3g}]")
    return ", ".join(out)


def answer_lines(doc: dict) -> list[str]:
    """The report's first lines: the frontier law, its held-out check and the next budgets' best loss."""
    out = [(f"- Frontier law (the best loss of each budget, {COUNTS[doc['count']]}): `{doc['formula']}`, "
            f"{params(doc)}.")]
    if c := doc.get("check"):
        for r in c["rows"]:
            out.append(f"- Held out: the best loss at C = {r['C']:.3g} (N = {r['N']:.3g}, mean of {r['seeds']} "
                       f"seed{'s' if r['seeds'] > 1 else ''}) was {r['loss']:.4f}; the law fitted on the budgets "
                       f"below predicted {r['predicted']:.4f} [95% predictive {r['predicted_low']:.4f}, "
                       f"{r['predicted_high']:.4f}]: error **{100 * r['rel_error']:+.2f}%**"
                       f"{'' if r['inside'] else ', outside its interval'}.")
    for r in doc["beyond"]:
        out.append(f"- Best loss at C = {r['C']:.3g}: {r['loss']:.4f} [law {r['loss_low']:.4f}, {r['loss_high']:.4f}; "
                   f"one run {r['loss_predictive_low']:.4f}, {r['loss_predictive_high']:.4f}].")
    return out + [f"- **Warning**: {w}." for w in doc["warnings"]]


def section(doc: dict) -> list[str]:
    """The report's frontier-law section: the best run of each budget, the backtests and the check."""
    out = ["## Frontier law", "",
           (f"`{doc['formula']}` fitted to the best loss of each budget ({COUNTS[doc['count']]}); a budget's best is "
            f"its lowest cell mean over seeds. {params(doc)}."
            + (f" E is left out: {doc['why_power']}." if doc.get("why_power") else "")),
           "", (f"Noise: {doc['noise_source']}. Drift: {100 * doc['drift_per_decade']:.2f}% per decade outside the "
                "fitted budgets, " + ("assumed: two budgets cannot backtest themselves (the median of our backtests, "
                                      "docs/protocol.md)." if doc["drift_assumed"] else
                                      "from the backtests below (the median over their predictions).")), "",
           "| budget C | best run's C | N | D | best loss | seeds | sizes on both sides |", "|---|---|---|---|---|---|---|"]
    out += [f"| {p['budget']:.3g} | {p['C']:.3g} | {p['N']:.3g} | {p['D']:.3g} | {p['loss']:.4f} | {p['seeds']} | "
            f"{'yes' if p['bracketed'] else '**no**'} |" for p in doc["points"]]
    if doc["backtests"]:
        out += ["", "Backtests (the law fitted on the first budgets, predicting each later one):", "",
                "| fitted budgets | C | best loss | predicted | error | decades beyond |", "|---|---|---|---|---|---|"]
        out += [f"| {b['fit_budgets']} | {b['C']:.3g} | {b['loss']:.4f} | {b['predicted']:.4f} | "
                f"{100 * b['rel_error']:+.2f}% | {b['decades']:.2f} |" for b in doc["backtests"]]
    if c := doc.get("check"):
        out += ["", (f"Check: refitted without {c['holdout']}, the law predicts each held-out budget's best loss "
                     "(95% intervals of the law and of the measured best loss):"), "",
                "| C | N | best loss (seeds) | predicted | 95% law | 95% predictive | error | inside |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['C']:.3g} | {r['N']:.3g} | {r['loss']:.4f} ({r['seeds']}) | {r['predicted']:.4f} | "
                f"[{r['parameter_low']:.4f}, {r['parameter_high']:.4f}] | [{r['predicted_low']:.4f}, "
                f"{r['predicted_high']:.4f}] | {100 * r['rel_error']:+.2f}% | {'yes' if r['inside'] else '**no**'} |"
                for r in c["rows"]]
    return out + [""]
