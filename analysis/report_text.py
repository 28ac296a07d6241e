"""What a fitted analysis says in words: the terminal tables of `scaling fit` and report.md, answer first.

Reads an analysis.fit.Analysis (analysis.report.fit_all); fits nothing itself.
"""

from __future__ import annotations

import math
from pathlib import Path

from analysis import data_constrained, frontier_law
from analysis.fit import Analysis
from analysis.table import COUNTS

# The variant of each approach that speaks for it: Approach 2 as Porian et al. (2024) published it.
APPROACHES = {"frontier": "Approach 1 (compute frontier)", "isoflop_akima": "Approach 2 (IsoFLOP minima)",
              "chinchilla": "Approach 3 (joint law)"}


def disagreements(forms: dict) -> list[str]:
    """A warning for every pair of Hoffmann et al.'s approaches whose 95% intervals on a (N_opt ~ C^a) are
    disjoint: they cannot both be right about how to spend the next budget."""
    out = []
    have = [k for k in APPROACHES if k in forms and "a" in forms[k].params]
    for i, x in enumerate(have):
        for y in have[i + 1:]:
            p, q = forms[x].params["a"], forms[y].params["a"]
            if p["ci_high"] < q["ci_low"] or q["ci_high"] < p["ci_low"]:
                out.append(f"methods disagree: a = {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] from "
                           f"{APPROACHES[x]} but {q['value']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}] from "
                           f"{APPROACHES[y]}: the intervals do not overlap")
    return out


def format_tables(result: Analysis) -> str:
    lines = []
    t = result.table
    lines.append(f"{t.source}: {len(t.df)} rows used" + (f"; excluded: {'; '.join(t.excluded)}" if t.excluded else ""))
    for name, f in result.forms.items():
        lines.append("")
        lines.append(f"{name}: {f.formula}   ({f.n_points} points)")
        lines.append(f"  {'parameter':<16}{'value':>12}{'95% low':>12}{'95% high':>12}")
        for p, v in f.params.items():
            value = "not ident." if p in f.not_identified else format(v["value"], ">12.4g")
            ci = f"{'pinned':>12}{'':>12}" if p in f.pinned else f"{v['ci_low']:>12.4g}{v['ci_high']:>12.4g}"
            lines.append(f"  {p:<16}{value:>12}{ci}")
        lines += [f"  {line}" for line in data_constrained.search_lines(f)]
        for w in f.warnings:
            lines.append(f"  warning: {w}")
    for name, why in result.skipped.items():
        lines.append(f"\n{name}: not fitted ({why})")
    for w in result.warnings:
        lines.append(f"\nwarning: {w}")
    if f := result.frontier_law:  # the answer's lines, without their Markdown
        lines.append("")
        lines += [line[2:].replace("**", "").replace("`", "") for line in frontier_law.answer_lines(f)]
    e = result.extrapolation
    if e:
        lines.append(f"\nextrapolation: Chinchilla law fitted on {e['n_fit']} runs, predicting {e['holdout']}:")
        for r in e["rows"]:
            lines.append(f"  N={r['N']:.3g} D={r['D']:.3g} C={r['C']:.3g}: loss {r['loss']:.4f}, predicted "
                         f"{r['predicted']:.4f} [{r['predicted_low']:.4f}, {r['predicted_high']:.4f}], "
                         f"error {100 * r['rel_error']:+.2f}%{'' if r['inside'] else ' (outside)'}")
        lines.append(f"  max |relative error| = {100 * e['max_abs_rel_error']:.2f}%, {e['inside']} of "
                     f"{len(e['rows'])} inside their 95% intervals ({e['interval']}); "
                     f"{e['inside_parameter_only']} inside the parameter-only ones")
    return "\n".join(lines)


def _row_interval(r: dict, k: str) -> str:
    """A compute-optimal row's value with its interval: 'v [low, high]'."""
    return f"{r[k]:.3g} [{r.get(k + '_low', math.nan):.3g}, {r.get(k + '_high', math.nan):.3g}]"


def _predictive(r: dict) -> str:
    """', predictive [low, high]' for an optimal row's loss, when it has one."""
    if "loss_predictive_low" not in r:
        return ""
    return f" (one run: 95% predictive [{r['loss_predictive_low']:.3g}, {r['loss_predictive_high']:.3g}])"


def _interval(fit, name: str, fmt: str = ".3g") -> str:
    """A fitted parameter with its interval, or 'not identified' with the interval when the data do not
    determine it (analysis.fit.judge): never an estimate the data cannot support."""
    p = fit.params[name]
    value = "not identified" if name in fit.not_identified else f"{p['value']:{fmt}}"
    return f"{value} [{p['ci_low']:{fmt}}, {p['ci_high']:{fmt}}]"


def _allocation_unknown(result: Analysis) -> str | None:
    chin = result.forms.get("chinchilla")
    return chin.not_identified.get("a") if chin is not None else None


def answer(result: Analysis) -> list[str]:
    """The report's first section: exponents, the held-out error, where to spend the next budget, and whether the
    approaches agree, each with its 95% interval."""
    out = ["## The answer", ""]
    if result.frontier_law:
        out += frontier_law.answer_lines(result.frontier_law)
    chin = result.forms.get("chinchilla")
    if chin is not None:
        out.append(f"- Joint law (Approach 3): alpha = {_interval(chin, 'alpha')}, beta = {_interval(chin, 'beta')}, "
                   f"a = beta / (alpha + beta) = {_interval(chin, 'a')}, E = {_interval(chin, 'E')}.")
    for form in ("frontier", "isoflop_akima"):
        if form in result.forms:
            out.append(f"- {APPROACHES[form]}: a = {_interval(result.forms[form], 'a')}.")
    e = result.extrapolation
    if e:
        noise = e.get("seed_noise")
        seeds = (f"; seed-to-seed standard deviation {100 * noise['rel_sd']:.2f}% of loss ({noise['cells']} cells, "
                 f"{noise['runs']} runs)" if noise else "; no seed replicates")
        out.append(f"- Held out {e['holdout']}: largest error **{100 * e['max_abs_rel_error']:.2f}%**, "
                   f"{e['inside']} of {len(e['rows'])} inside their 95% predictive intervals "
                   f"({e['inside_parameter_only']} inside the parameter-only ones){seeds}.")
        if m := e.get("noise_and_misfit"):
            out.append(f"- Averaged over the seeds of each held-out cell: largest error "
                       f"{100 * m['max_abs_rel_error']:.2f}%; {_misfit_verdict(m)}.")
    if result.optimal and (why := _allocation_unknown(result)):
        out.append(f"- Compute-optimal N and D beyond the sweep: not identified (a: {why}).")
    else:
        out += [f"- At C = {r['C']:.3g} FLOPs: N_opt = {_row_interval(r, 'N_opt')}, D_opt = "
                f"{_row_interval(r, 'D_opt')}, loss {_row_interval(r, 'loss')}{_predictive(r)}."
                for r in result.optimal[:2]]
    out += [f"- **Warning**: {w}." for w in disagreements(result.forms)]
    return out + [""] if len(out) > 2 else []


def _misfit_verdict(m: dict) -> str:
    if m["systematic"] is None:
        return "the law's predictions are not all finite, so noise and misfit cannot be told apart"
    what = ("a misfit beyond the held-out runs' noise, which more seeds would not average away" if m["systematic"]
            else "within the held-out runs' noise")
    return (f"mean error {100 * math.expm1(m['mean_log_error']):+.2f}% against a seed-noise standard error of "
            f"{100 * m['mean_log_error_se']:.2f}% (held-out seed sd {100 * m['seed_rel_sd']:.2f}%): {what}")


def _extrapolation_section(e: dict) -> list[str]:
    noise = e.get("seed_noise")
    out = ["## Extrapolation check", "",
           (f"The Chinchilla law refitted on {e['n_fit']} runs predicts {e['holdout']}. Intervals: the "
            f"parameters' (bootstrap refits only) and the {e['interval']}."),
           "", "| N | D | C | loss | predicted | 95% parameters | 95% predictive | error | inside |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['N']:.3g} | {r['D']:.3g} | {r['C']:.3g} | {r['loss']:.4f} | {r['predicted']:.4f} | "
            f"[{r['parameter_low']:.4f}, {r['parameter_high']:.4f}] | "
            f"[{r['predicted_low']:.4f}, {r['predicted_high']:.4f}] | {100 * r['rel_error']:+.2f}% | "
            f"{'yes' if r['inside'] else '**no**'} |" for r in e["rows"]]
    out += ["", (f"Largest relative error: **{100 * e['max_abs_rel_error']:.2f}%**; {e['inside']} of "
                 f"{len(e['rows'])} inside their predictive intervals, {e['inside_parameter_only']} inside the "
                 "parameter-only ones."), ""]
    if noise:
        out += [f"Seed-to-seed standard deviation of loss: {100 * noise['rel_sd']:.2f}% (pooled over {noise['cells']} "
                f"cells, {noise['runs']} runs, {noise['dof']} degrees of freedom; per cell: "
                + ", ".join(f"N {c['N']:.3g} D {c['D']:.3g}: {100 * c['rel_sd']:.2f}%" for c in noise["per_cell"])
                + ").", ""]
    if m := e.get("noise_and_misfit"):
        out += [(f"Noise against misfit: each held-out cell's mean loss over its seeds and its error, also in units "
                 f"of the noise of that mean (the held-out replicates' pooled seed sd, {100 * m['seed_rel_sd']:.2f}% "
                 f"over {m['seed_cells']} cells, over the square root of the cell's runs)."), "",
                "| N | D | runs | mean loss | predicted | error | seed sd | error / noise |",
                "|---|---|---|---|---|---|---|---|"]
        for c in m["cells"]:
            sd = "-" if c["seed_rel_sd"] is None else f"{100 * c['seed_rel_sd']:.2f}%"
            units = "-" if c["noise_units"] is None else f"{c['noise_units']:+.1f}"
            out.append(f"| {c['N']:.3g} | {c['D']:.3g} | {c['runs']} | {c['loss']:.4f} | {c['predicted']:.4f} | "
                       f"{100 * c['rel_error']:+.2f}% | {sd} | {units} |")
        out += ["", f"Over all held-out runs: {_misfit_verdict(m)}.", ""]
    return out


def markdown(result: Analysis, figures: list[Path], folder: Path, emergence: str | None = None) -> str:
    t = result.table
    out = [f"# Scaling report: {t.source}", "",
           (f"{len(t.df)} runs used; N from {t.df['N'].min():.3g} to {t.df['N'].max():.3g} non-embedding "
           f"parameters, D from {t.df['D'].min():.3g} to {t.df['D'].max():.3g} tokens, C from "
           f"{t.df['C'].min():.3g} to {t.df['C'].max():.3g} FLOPs ({COUNTS[t.count]}); loss in {t.loss_unit}.")]
    if t.excluded:
        out += ["", "Excluded: " + "; ".join(t.excluded) + "."]
    out += [""] + answer(result)
    if result.frontier_law:
        out += frontier_law.section(result.frontier_law)
    if result.extrapolation:
        out += _extrapolation_section(result.extrapolation)
    n = result.n_boot
    out += ["## Fitted laws", "", (f"95% intervals from {n:,} bootstrap resamples of runs ({min(n, 200):,} for "
                                   "the Kaplan and data-constrained forms and the extrapolation check)."), ""]
    for name, f in result.forms.items():
        out += [f"### {name}: `{f.formula}`", "", "| parameter | value | 95% interval |", "|---|---|---|"]
        out += [f"| {p} | {'not identified' if p in f.not_identified else format(v['value'], '.4g')} | "
                + ("pinned |" if p in f.pinned else f"[{v['ci_low']:.4g}, {v['ci_high']:.4g}] |")
                for p, v in f.params.items()]
        out += [""] * bool(f.search) + [f"- {line}" for line in data_constrained.search_lines(f)]
        out += [f"\n> warning: {w}" for w in f.warnings] + [""]
    if result.skipped:
        out += ["Not fitted: " + "; ".join(f"{k} ({v})" for k, v in result.skipped.items()) + ".", ""]
    out += [f"> warning: {w}" for w in result.warnings]
    if result.optimal and (why := _allocation_unknown(result)):
        out += ["## Compute-optimal allocation beyond the sweep (Chinchilla fit, C = 6ND)", "",
                f"Not identified: the allocation exponent a is not determined by the data ({why}).", ""]
    elif result.optimal:
        out += ["## Compute-optimal allocation beyond the sweep (Chinchilla fit, C = 6ND)", "",
                "Brackets: 95% intervals of the law's parameters; the last column is where one run trained at that "
                "allocation should land (predictive: " + result.scatter.describe() + ").", "",
                "| C (FLOPs) | N_opt | D_opt | tokens / parameter | predicted loss | 95% predictive |",
                "|---|---|---|---|---|---|"]
        for r in result.optimal:
            cells = [_row_interval(r, k) for k in ("N_opt", "D_opt", "tokens_per_param", "loss")]
            cells.append(f"[{r.get('loss_predictive_low', math.nan):.3g}, {r.get('loss_predictive_high', math.nan):.3g}]")
            out.append(f"| {r['C']:.3g} | " + " | ".join(cells) + " |")
        out.append("")
    if emergence:
        out += [emergence, ""]
    if figures:
        out += ["## Figures", ""] + [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in figures]
    return "\n".join(out) + "\n"
