"""The `scaling` command.

    scaling train [hydra overrides]          one run (or `-m` for a Hydra multirun)
    scaling sweep SWEEP.yaml [overrides]     every cell of a sweep file, then collect, fit, plots and report
    scaling plan SWEEP.yaml [overrides]      the cells, their sizes and an estimated time, without training
    scaling collect RESULTS                  run folders -> runs.csv, runs.parquet, curves.parquet
    scaling fit | predict | plot | report RESULTS ...   analysis, no training (see `scaling fit --help`)
    scaling emergence RESULTS [--axis ...]   emergence thresholds of probe metrics (or any table's metrics)
    scaling bench [--sizes ...]              training throughput of the size ladder against the device's peak
"""

from __future__ import annotations

import sys

COMMANDS = ("train", "sweep", "plan", "collect", "fit", "predict", "plot", "report", "emergence", "bench")


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
        from scaling import app

        sys.argv = ["scaling train", *rest]
        app.main()
        return 0
    if command in ("sweep", "plan"):
        from scaling import sweep

        return sweep.cli(command, rest)
    if command == "collect":
        from scaling import collect

        return collect.cli(rest)
    if command == "bench":
        from scaling import bench

        return bench.main(rest)
    if command == "emergence":
        from analysis import emergence_report

        return emergence_report.main(rest)
    from analysis import cli as analysis_cli

    return analysis_cli.main(command, rest)


if __name__ == "__main__":
    sys.exit(main())
