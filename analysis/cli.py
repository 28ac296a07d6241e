"""`scaling fit | predict | plot | report | emergence RESULTS` -- analysis of a results folder or any CSV / Parquet
table."""

from __future__ import annotations

import argparse
import json
import sys

from analysis import (
    data_constrained,
    emergence_report,
    extrapolation,
    isoflop,
    laws,
    lse,
    predictive,
    report,
    report_text,
)
from analysis.fit import judge
from analysis.table import COUNTS, TableError, load, results_folder


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"scaling {command}", description=__doc__)
    p.add_argument("results", help="a results folder (with runs.parquet or runs.csv) or a .csv / .parquet file")
    g = p.add_argument_group("columns (defaults: our names; map any table's columns)")
    for name, help_ in (("n", "model size N"), ("d", "training tokens D"), ("c", "compute C in FLOPs"),
                        ("loss", "loss"), ("steps", "training steps"), ("group", "group / model family"),
                        ("seed", "seed"), ("budget", "IsoFLOP compute budget label")):
        # In `predict`, --n and --d are the point to predict at, so their column flags are --n-col, --d-col.
        flag = f"--{name}-col" if command == "predict" and name in ("n", "d") else f"--{name}"
        g.add_argument(flag, dest=f"{name}_col", metavar="COLUMN", help=help_)
    g.add_argument("--unique-tokens", dest="unique_tokens_col", metavar="COLUMN",
                   help="unique tokens U of runs that repeat data (the data-constrained law)")
    g.add_argument("--best-per", metavar="COLS", help="keep the lowest-loss row per these standard columns, "
                   "comma-separated (e.g. N,D to keep the best learning rate)")
    g.add_argument("--where", metavar="QUERY", help="pandas query on the raw table, e.g. 'N < 1.25e9'")
    dup = g.add_mutually_exclusive_group()
    dup.add_argument("--strict", action="store_const", dest="duplicates", const="refuse", default="once",
                     help="refuse rows that repeat another row exactly (default: count each once, and say so)")
    dup.add_argument("--keep-duplicates", action="store_const", dest="duplicates", const="keep",
                     help="keep rows that repeat another exactly, as a published fit that counted them did")
    g.add_argument("--count", choices=list(COUNTS),
                   help="how compute C is counted for every fit: " + "; ".join(f"{k}: {v}" for k, v in COUNTS.items())
                   + " (default: 6ND, and 6N_total_D for the frontier law where the table has N_total; the joint "
                   "law's allocation is always solved in 6ND)")
    if command == "plot":  # figures in seconds: point fits, bands only when resamples are asked for
        p.add_argument("--n-boot", type=int, default=0, help="bootstrap resamples for the bands (default 0)")
    else:
        p.add_argument("--n-boot", type=int, default=laws.N_BOOT, help="bootstrap resamples (default 1000)")
    if command in ("fit", "report"):
        p.add_argument("--data-law", choices=("two-stage", "one-rstar"), default="two-stage",
                       help="data-constrained law: Muennighoff et al.'s two stages with R*_N and R*_D (default), or "
                            "one R* fitted with all five Chinchilla parameters")
        p.add_argument("--fix", metavar="NAME=VALUE,...", default="",
                       help="pin parameters of the data-constrained law: E, A, B and alpha together (its stage 1, "
                            "e.g. published constants; stage 2 then fits every run), R_star_D, R_star_N")
        p.add_argument("--compare", metavar="NAME=VALUE,...", default="",
                       help="also print the data-constrained law's objective at this point (e.g. a published R*), "
                            "so a flat objective shows as one")
        p.add_argument("--starts", choices=("default", "published"), default="default",
                       help="the data-constrained law's stage-2 starts: default (a log grid, the lowest minimum, "
                            "every minimum reported) or published (Muennighoff et al.'s grid and local descent)")
        p.add_argument("--holdout-above-flops", type=float, help="extrapolation check: fit below this C")
        p.add_argument("--holdout-top", type=int, help="extrapolation check: hold out the k largest-C runs")
        p.add_argument("--noise", type=float, metavar="SD",
                       help="the loss noise (sd, loss units) of Porian et al.'s IsoFLOP bootstrap; default: theirs "
                            "for a `dataset` column naming RefinedWeb (0.002) or OpenWebText2 (0.01), else the "
                            "table's measured seed noise, else 0.002")
    if command == "fit":
        p.add_argument("--json", action="store_true", help="print fit.json to stdout instead of tables")
        p.add_argument("--method", choices=("fast", "full"), default="fast",
                       help="Approach 3 optimiser: fast (vectorised grid + refinement) or full (L-BFGS-B from "
                            "all 4,500 starts)")
    if command == "predict":
        p.add_argument("--flops", type=float, action="append", help="compute budget(s) for compute-optimal N, D")
        p.add_argument("--n", type=float, help="predict the loss at this N (with --d)")
        p.add_argument("--d", type=float, help="predict the loss at this D (with --n)")
    if command in ("plot", "report"):
        p.add_argument("--format", choices=("png", "svg", "pdf"), default="png")
    return p


def _load_kwargs(args) -> dict:
    best = tuple(s.strip() for s in args.best_per.split(",")) if args.best_per else None
    return {k: getattr(args, f"{k}_col") for k in ("n", "d", "c", "loss", "steps", "group", "seed", "budget")} | \
        {"best_per": best, "where": args.where, "unique_tokens": args.unique_tokens_col, "count": args.count,
         "duplicates": args.duplicates}


def _named_values(text: str, flag: str) -> dict:
    """NAME=VALUE,... -> {name: float}; a malformed pair is a TableError naming it."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, eq, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
            if not eq or not name.strip():
                raise ValueError
        except ValueError:
            raise TableError(f"{flag} takes NAME=VALUE pairs separated by commas (e.g. {flag} R_star_D=15.39), "
                             f"got {item!r}") from None
    return out


def _data_options(args) -> dict:
    """--fix, --compare and --starts, checked: a TableError says what is wrong before anything is fitted."""
    options = {"fix": _named_values(args.fix, "--fix"), "compare": _named_values(args.compare, "--compare"),
               "starts": args.starts}
    try:
        data_constrained.check_options(options["fix"], options["compare"], options["starts"], args.data_law)
    except ValueError as e:
        raise TableError(str(e)) from None
    return options


def main(command: str, argv: list[str]) -> int:
    args = _parser(command).parse_args(argv)
    try:
        options = _data_options(args) if command in ("fit", "report") else None
        if command in ("plot", "report"):
            report.build(args.results, quiet=command == "plot", n_boot=args.n_boot, fmt=args.format,
                         figures_only=command == "plot",
                         holdout_above=args.holdout_above_flops if command == "report" else None,
                         holdout_top=args.holdout_top if command == "report" else None,
                         data_law=args.data_law if command == "report" else "two-stage",
                         noise=args.noise if command == "report" else None, data_options=options,
                         **_load_kwargs(args))
            folder = results_folder(args.results)
            print(f"wrote figures to {folder / 'plots'}" + (f" and {folder / 'report.md'}" if command == "report"
                                                             else ""))
            return 0
        t = load(args.results, **_load_kwargs(args))
    except TableError as e:
        print(f"scaling {command}: {e}", file=sys.stderr)
        return 2
    if command == "predict":
        return _predict(t, args)
    try:
        result = report.fit_all(t, n_boot=args.n_boot, holdout_above=args.holdout_above_flops,
                                holdout_top=args.holdout_top, method=args.method, data_law=args.data_law,
                                noise=args.noise, data_options=options)
    except TableError as e:
        print(f"scaling {command}: {e}", file=sys.stderr)
        return 2
    doc = report.to_json(result)
    (results_folder(args.results) / "fit.json").write_text(json.dumps(doc, indent=1, default=float))
    print(json.dumps(doc, indent=1, default=float) if args.json else report_text.format_tables(result))
    return 0


def _predict(t, args) -> int:
    if not args.flops and args.n is None:
        print("scaling predict: give --flops C (compute-optimal N, D) or --n N --d D (a loss)",
              file=sys.stderr)
        return 2
    if (why := report.joint_law_refusal(t.df)) is not None:  # what `scaling fit` refuses, predict refuses
        print(f"scaling predict: {t.source}: the joint law L(N, D) {why}", file=sys.stderr)
        return 2
    chin = judge(laws.chinchilla(t, n_boot=args.n_boot), report.FREE_PARAMETERS["chinchilla"])
    for w in chin.warnings:
        print(f"warning: {w}", file=sys.stderr)
    scatter = predictive.scatter(t, chin, extrapolation.seed_sd(t.df))
    if args.n is not None:
        if args.d is None:
            print("scaling predict: --n needs --d", file=sys.stderr)
            return 2
        loss = float(chin.predict(args.n, args.d))
        lo, hi = laws.predicted_interval(chin, args.n, args.d)
        p_lo, p_hi = predictive.interval(chin, scatter, args.n, args.d)
        print(f"N={args.n:.4g} D={args.d:.4g}: predicted loss {loss:.4f} (Chinchilla fit on {len(t.df)} runs)\n"
              f"  95% interval of the law (parameters only): [{lo:.4f}, {hi:.4f}]\n"
              f"  95% predictive interval of one run:         [{p_lo:.4f}, {p_hi:.4f}]  ({scatter.describe()})")
    for C in args.flops or []:
        point, boot = laws.optimal(chin, C), laws.optimal(chin, C, samples=True)
        print(f"C = {C:.4g} FLOPs (Approach 3, joint law):")
        if "a" in chin.not_identified:
            print(f"  N_opt, D_opt: not identified (a: {chin.not_identified['a']})")
            continue
        for k, label in (("N_opt", "N_opt"), ("D_opt", "D_opt"), ("tokens_per_param", "tokens/param"),
                         ("loss", "loss")):
            lo, hi = lse.interval(boot[k])
            print(f"  {label:<14}{float(point[k]):>12.4g}   [95%: {lo:.4g}, {hi:.4g}]")
        lo, hi = predictive.spread(boot["loss"], scatter, C)
        print(f"  {'loss, one run':<14}{'':>12}   [95% predictive: {lo:.4g}, {hi:.4g}]")
        try:
            fit, _ = isoflop.approach1(t, n_boot=args.n_boot)
            n = float(fit.predict(C))
            print(f"  {'N_opt':<14}{n:>12.4g}   (Approach 1, compute frontier; D_opt = {C / (6 * n):.4g})")
        except ValueError as e:
            print(f"  Approach 1 not available: {e}")
    return 0


def _pairs(values: list[str] | None, what: str, number: bool = False) -> dict:
    out = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        if not sep:
            raise TableError(f"--{what} {v!r}: expected COLUMN=VALUE")
        if number:
            try:
                out[key] = float(val)
            except ValueError:
                out[key] = val  # the name of a column holding the chance level
        else:
            out[key] = val
    return out


def emergence(argv: list[str]) -> int:
    """`scaling emergence`."""
    p = argparse.ArgumentParser(prog="scaling emergence", description=emergence_report.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results folder (runs.parquet / runs.csv) or a .csv / .parquet table")
    p.add_argument("--axis", action="append", help="scale column(s): N, C, D, steps, or loss (default: N and C)")
    p.add_argument("--metric", action="append", help="metric column(s), 'task/metric' names group by task "
                   "(default: our probe/<task>/<metric> columns)")
    p.add_argument("--chance", action="append", help="COLUMN=VALUE (or =COLUMN holding it) chance level")
    p.add_argument("--items", action="append", help="COLUMN=ITEMS_COLUMN: evaluation items per row, for "
                   "binomial standard errors")
    p.add_argument("--pair", action="append", help="DISCONTINUOUS=CONTINUOUS: the counterpart shown beside it")
    p.add_argument("--group", help="model family column: each family is analysed on its own")
    p.add_argument("--lower-is-better", action="append", default=[], metavar="COLUMN",
                   help="a metric that falls as models improve (loss, perplexity, nll, bpb and ppl are known by name)")
    p.add_argument("--n-boot", type=int, default=400, help="bootstrap resamples (default 400)")
    p.add_argument("--format", choices=("png", "svg", "pdf"), default="png")
    args = p.parse_args(argv)
    try:
        results = emergence_report.build(args.results, n_boot=args.n_boot, fmt=args.format, quiet=False, metrics=args.metric,
                        axes=args.axis, chance=_pairs(args.chance, "chance", number=True),
                        items=_pairs(args.items, "items"), pairs=_pairs(args.pair, "pair"), group=args.group,
                        lower=args.lower_is_better)
    except TableError as e:
        print(f"scaling emergence: {e}", file=sys.stderr)
        return 2
    if results is None:
        print(f"scaling emergence: {args.results} has no probe/<task>/<metric> columns; name the metrics with "
              "--metric", file=sys.stderr)
        return 2
    return 0
