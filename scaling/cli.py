"""The `scaling` command.

    scaling train [hydra overrides]          one run (or `-m` for a Hydra multirun)
    scaling sweep SWEEP.yaml [overrides]     every cell of a sweep file, then collect, fit, plots and report
    scaling plan SWEEP.yaml [--time]         the runs, their sizes and compute (and estimated times), no training
    scaling corpus [data overrides]          prepare a corpus (tokenize it into the cache) and describe it
    scaling collect RESULTS                  run folders -> runs.csv, runs.parquet, curves.parquet
    scaling fit | predict | plot | report RESULTS ...   analysis, no training (see `scaling fit --help`)
    scaling emergence RESULTS [--axis ...]   emergence thresholds of probe metrics (or any table's metrics)
    scaling backtest RESULTS ...             every budget held out in turn: the frontier law's and the joint law's
                                             errors, and how often the joint law's intervals cover
    scaling bench [--sizes ...]              training throughput of the size ladder against the device's peak
"""

from __future__ import annotations

import sys

from scaling import app, collect, data, runs, signals, sweep, sweep_plan
from scaling.config import ConfigError, validate

COMMANDS = ("train", "sweep", "plan", "corpus", "collect", "fit", "predict", "plot", "report", "emergence", "backtest",
            "bench")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"scaling: unknown command {command!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "train":
        return _train(rest)
    if command in ("sweep", "plan"):
        return sweep.cli(command, rest)
    if command == "collect":
        return collect.cli(rest)
    if command == "corpus":
        return _corpus(rest)
    if command == "bench":
        from scaling import bench  # deliberately lazy: only `scaling bench` imports JAX in this process

        return bench.main(rest)
    # analysis (pandas, scipy, matplotlib) is imported only by the commands that use it: a training process never
    # loads matplotlib, and `import scaling.cli` takes 0.56 s instead of 1.31 s (docs/performance.md)
    from analysis import cli as analysis_cli

    if command == "emergence":
        return analysis_cli.emergence(rest)
    if command == "backtest":
        from analysis import backtests

        return backtests.main(rest)
    code = analysis_cli.main(command, rest)
    if command == "report" and code == 0 and rest and not rest[0].startswith("-"):
        _fits_to_trackers(rest[0])
    return code


def _fits_to_trackers(results: str) -> None:
    """`scaling report` of a sweep whose runs logged to trackers logs its fitted laws there too."""
    import json

    from analysis.table import results_folder
    from scaling import trackers

    folder = results_folder(results)
    if (folder / "fit.json").exists():
        trackers.log_fits(folder, json.loads((folder / "fit.json").read_text()))



def _train(rest: list[str]) -> int:
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in rest):  # Hydra's own flags (--help, --cfg)
        sys.argv = ["scaling train", *rest]
        app.main()
        return 0
    try:  # a bad override is one line here, before Hydra starts (its own report is a page)
        cfg, *_ = [sweep_plan.compose(cell) for cell in _cells_to_check(rest)]
    except Exception as e:  # noqa: BLE001 -- Hydra raises several kinds; each names the bad override
        print(f"scaling train: config error: {sweep_plan._one_line(e)}", file=sys.stderr)
        return 2
    try:  # a results folder that cannot be written is one line here too, before Hydra writes into it
        sweep.writable(runs.sweep_dir(cfg))
    except ConfigError as e:
        print(f"scaling train: config error: {e}", file=sys.stderr)
        return 2
    sys.argv = ["scaling train", *rest]
    signals.record_signals()  # the run stops at its next chunk boundary and exits 128 + the signal
    app.main()
    return 0


def _cells_to_check(rest: list[str]) -> list[list[str]]:
    """The overrides of a single run; for a multirun (`-m`), its first cell (each sweep's first value) and, for
    every other value of a sweep, the first cell with that value: each value is composed once."""
    overrides = [a for a in rest if a not in ("-m", "--multirun")]
    if len(overrides) == len(rest):
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [None] for o in parsed]
    first = [o.input_line if v[0] is None else f"{o.get_key_element()}={v[0]}" for o, v in zip(parsed, values)]
    cells = [first]
    for i, (o, vs) in enumerate(zip(parsed, values)):
        cells += [[*first[:i], f"{o.get_key_element()}={v}", *first[i + 1:]] for v in vs[1:]]
    return cells


def _corpus(rest: list[str]) -> int:
    """`scaling corpus data=shakespeare data.tokenizer=bpe ...`: tokenize the corpus once, then describe it."""
    if any(a in ("-h", "--help") for a in rest):
        print("usage: scaling corpus [--bench] [Hydra overrides of data.* and model.seq_len]\n"
              "Prepares the corpus the overrides name (as `scaling train` would) and prints what it holds;\n"
              "--bench times preparing it in a fresh cache against `tokenizers` alone (scaling.corpus_bench).")
        return 0
    bench = "--bench" in rest
    rest = [a for a in rest if a != "--bench"]
    try:
        try:
            cfg = sweep_plan.compose(rest)
        except Exception as e:  # noqa: BLE001 -- Hydra raises several kinds; each names the bad override
            raise ConfigError(sweep_plan._one_line(e)) from None
        validate(cfg)
        if bench:
            from scaling import corpus_bench

            return corpus_bench.main(rest, cfg)
        corpus = data.load_corpus(cfg.data.corpus, cfg.data.val_fraction, cfg.data.cache_dir, cfg.data.binary,
                                  cfg.data.tokenizer, cfg.data.vocab_size, cfg.data.text_field)
        print(data.describe(corpus, cfg.model.seq_len, cfg.data.eval_windows))
    except ConfigError as e:
        print(f"scaling corpus: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
