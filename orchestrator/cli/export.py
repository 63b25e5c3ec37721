"""``hilbed export mlflow RUN_DIR...`` and ``hilbed completion bash|zsh|tcsh``.

export mlflow: one MLflow run per run directory with a nested child run per
codec x condition cell (:mod:`hilbed.analysis.export_mlflow`); default
tracking URI ``file:./mlruns``. Without mlflow installed: one line telling how
to install it, exit 2.

completion: prints a shell completion script generated from the parser by
shtab (``pip install 'hilbed[completion]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hilbed.orchestrator.cli.output import add_json_flag, emit, wants_json

COMPLETION_HINT = "pip install 'hilbed[completion]'"


def cmd_export_mlflow(args) -> int:
    from hilbed.analysis.export_mlflow import MlflowMissing, export_run
    from hilbed.analysis.load import NotARunDir, is_run_dir
    for d in args.runs:
        p = Path(d)
        if not p.is_dir():
            print(f"hilbed export mlflow: {d}: no such directory", file=sys.stderr)
            return 2
        if not is_run_dir(p):
            print(f"hilbed export mlflow: {d}: not a run directory (no manifest.json, trials.jsonl or "
                  f"results.parquet)", file=sys.stderr)
            return 2
    done = []
    for d in args.runs:
        try:
            ex = export_run(d, tracking_uri=args.tracking_uri, experiment=args.experiment)
        except MlflowMissing as exc:
            print(f"hilbed export mlflow: {exc}", file=sys.stderr)
            return 2
        except NotARunDir as exc:
            print(f"hilbed export mlflow: {exc}", file=sys.stderr)
            return 2
        done.append(ex.to_dict())
        if not wants_json(args):
            print(f"{d}: MLflow run {ex.mlflow_run_id} (experiment {args.experiment!r}, {len(ex.cells)} cell runs, "
                  f"artifacts {', '.join(ex.artifacts)})")
    if wants_json(args):
        emit(args, {"tracking_uri": args.tracking_uri, "experiment": args.experiment, "runs": done})
    else:
        print(f"tracking URI: {args.tracking_uri} (view with: mlflow ui --backend-store-uri {args.tracking_uri})")
    return 0


def cmd_completion(args) -> int:
    try:
        import shtab
    except ImportError:
        print(f"hilbed completion: shtab is not installed; install it with: {COMPLETION_HINT}", file=sys.stderr)
        return 2
    sys.stdout.write(shtab.complete(_root(args._subcommands), shell=args.shell))
    return 0


def _root(subcommands) -> argparse.ArgumentParser:
    """A ``hilbed`` parser around the real sub-command table (``register`` got it; importing main here
    would be an import cycle): every sub-command, its options and choices, as the real parser has them."""
    root = argparse.ArgumentParser(prog="hilbed", add_help=True)
    root.add_argument("--version", "-V", action="store_true", help="print the version and exit")
    root._add_action(subcommands)
    return root


def register(sub) -> None:
    e = sub.add_parser("export", help="export runs to an experiment tracker (mlflow)")
    esub = e.add_subparsers(dest="target", required=True)
    m = esub.add_parser("mlflow", help="log run directories to MLflow (one run each, a child run per cell)",
                        description="Log each run directory as an MLflow run: params (scenario, testbed, git sha), "
                                    "tags (hilbed.run_id, hilbed.state), the run's overall metrics, one nested child "
                                    "run per codec x condition cell (codec and condition params, that cell's summary "
                                    "metrics) and artifacts (manifest.json, trials.jsonl, summary.csv, report/). "
                                    "Needs mlflow: pip install 'hilbed[mlflow]'.")
    m.add_argument("runs", nargs="+", metavar="RUN_DIR")
    m.add_argument("--tracking-uri", default="file:./mlruns",
                   help="MLflow tracking URI (default file:./mlruns, a local file store)")
    m.add_argument("--experiment", default="hilbed", help="MLflow experiment name (default hilbed; created if absent)")
    add_json_flag(m, "print {tracking_uri, experiment, runs: [{run_dir, run_id, mlflow_run_id, experiment_id, "
                     "cells, artifacts}]} as JSON on stdout")
    m.set_defaults(fn=cmd_export_mlflow)

    c = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)",
                       description="Print a completion script generated from the parser (needs shtab: "
                                   "pip install 'hilbed[completion]'). Enable for bash: "
                                   "eval \"$(hilbed completion bash)\".")
    c.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    c.set_defaults(fn=cmd_completion, _subcommands=sub)
