"""``layerprint``: compare runs, test the seed articles' claims, send spooled points, open the UI."""

from __future__ import annotations

import argparse
import os
import sys

from layerprint.errors import LayerprintError


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported in one line (what was wrong, where the help is)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="layerprint", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser("compare", help="which runs started identical and where they diverge")
    compare.add_argument("--experiment", help="compare the layerprint runs of this experiment (default: the runs of the "
                         "store's latest sweep, else the experiment layerprint)")
    compare.add_argument("--tracking-uri", help="store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    compare.add_argument("--run-ids", nargs="+", metavar="ID", help="compare exactly these runs")
    compare.add_argument("--parent", metavar="RUN_ID", help="compare the jobs of this sweep parent run")
    compare.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    compare.add_argument("--out", metavar="DIR", help="also write the report (json, md, txt, a self-contained report.html) and PNG plots into DIR, "
                         "and log them to the runs' sweep parent run if they share one")
    compare.add_argument("--atol", type=float, default=None, help="absolute loss tolerance (default 1e-6)")
    compare.add_argument("--rtol", type=float, default=None, help="relative loss tolerance (default 1e-5)")

    claims = commands.add_parser("claims", help="test the seed articles' claims C01-C16 with real runs")
    claims.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    claims.add_argument("--tracking-uri", help="store for the runs (default: MLFLOW_TRACKING_URI, else a new "
                        "temporary SQLite store whose path is printed)")
    claims.add_argument("--only", nargs="+", metavar="ID", help="run only these claims, e.g. C08 C10")

    sync = commands.add_parser("sync", help="send what the callback kept locally (the spool) to its store")
    sync.add_argument("--tracking-uri", help="the store whose spool to send (default: MLFLOW_TRACKING_URI, else "
                      "./mlruns); with --all, the store to send every spooled run to")
    what = sync.add_mutually_exclusive_group()
    what.add_argument("--all", action="store_true", help="send the spool of every store, each run to the store it "
                      "was meant for")
    what.add_argument("--list", action="store_true", help="list the spooled runs and their stores; send nothing")
    what.add_argument("--drop", metavar="RUN_ID", nargs="+", help="delete these spooled runs (give up on them)")

    ui = commands.add_parser("ui", help="serve the store with MLflow's UI on 127.0.0.1 and print where the latest "
                             "sweep's runs part")
    ui.add_argument("--tracking-uri", help="store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db); an "
                    "http(s) server is not served again, only its addresses are printed")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000; the next free one when "
                    "it is taken)")
    return parser


def _compare(args: argparse.Namespace) -> int:
    from layerprint.analysis.compare import DEFAULT_ATOL, DEFAULT_RTOL, compare_records
    from layerprint.analysis.report import render, write_report
    from layerprint.analysis.runs import collect, common_parent
    from layerprint.errors import ConfigError
    from layerprint.tracking.store import open_store

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    rtol = DEFAULT_RTOL if args.rtol is None else args.rtol
    if atol < 0 or rtol < 0:
        raise ConfigError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
    uri = _existing_store(args.tracking_uri)
    client = open_store(uri)
    records = collect(client, args.experiment, args.run_ids, args.parent)
    report = compare_records(records, atol, rtol)
    print(render(report, args.format))
    if args.out:
        from layerprint.analysis.publish import publish_comparison

        written = write_report(report, args.out, records)
        parent = common_parent(records)
        if parent:
            publish_comparison(client, parent, report, records, written)
        print(f"layerprint compare: wrote {len(written)} file(s) to {args.out}"
              + (f" and logged them, and the comparison, to the sweep parent run {parent}" if parent else ""),
              file=sys.stderr)
    return 0


def _existing_store(tracking_uri: str | None) -> str:
    """The store to read (resolved as everywhere), refused in one line when a SQLite file is not there."""
    from pathlib import Path

    from layerprint.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise LayerprintError(f"no tracking store at {uri}; run layerprint-train first or give --tracking-uri")
    return uri


def _ui(args: argparse.Namespace) -> int:
    import signal
    import tempfile
    import time
    from pathlib import Path

    from layerprint.analysis.addresses import comparison_addresses
    from layerprint.analysis.runs import latest_sweep
    from layerprint.errors import ConfigError
    from layerprint.tracking import server
    from layerprint.tracking.redact import strip_credentials
    from layerprint.tracking.store import open_store

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    uri = _existing_store(args.tracking_uri)
    sweep = latest_sweep(open_store(uri))
    process = None
    # Ctrl-C stops it even where SIGINT came ignored (a job started with ``&`` by a script inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if uri.startswith(("http://", "https://")):
        ui = strip_credentials(uri).rstrip("/")
    else:
        folder = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else Path.cwd()
        log = Path(tempfile.mkdtemp(prefix="layerprint-ui-")) / "server.log"
        process, ui = server.serve(uri, server.free_port(args.port), folder / "artifacts", log)
    try:  # from here on a Ctrl-C at any moment stops the server (it runs in a process group of its own)
        if process is not None:
            print(f"layerprint ui: serving {strip_credentials(uri)} at {ui} (Ctrl-C stops it)")
        if sweep is not None:
            curves, gaps, parent = comparison_addresses(ui, sweep.info.experiment_id, sweep.info.run_id)
            print(f"The latest sweep, {sweep.info.run_name!r}:\nThe loss curves:  {curves}\n"
                  f"The gap per pair: {gaps}\nIts parent run:   {parent}", flush=True)
        else:
            print(f"No sweep in this store yet: {ui}/#/experiments?workflowType=machine_learning", flush=True)
        while process is not None and process.poll() is None:
            # Not a blocking wait: a Ctrl-C that one of the process's other threads receives would not
            # interrupt it, and the main thread sees the signal only between two of its own steps.
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if process is not None:
            server.stop(process)
    return 0


def _claims(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from layerprint.analysis.claims import CATALOGUE, ERROR, format_markdown, format_table
    from layerprint.errors import ConfigError
    from layerprint.tracking.redact import strip_credentials
    from layerprint.tracking.store import resolve_tracking_uri

    known = [claim.id for claim in CATALOGUE]
    unknown = [claim_id for claim_id in args.only or [] if claim_id not in known]
    if unknown:
        raise ConfigError(f"unknown claim id(s) {', '.join(unknown)}; valid ids: {known[0]}..{known[-1]}")
    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        uri = resolve_tracking_uri(args.tracking_uri)
    else:
        uri = f"sqlite:///{tempfile.mkdtemp(prefix='layerprint-claims-')}/mlflow.db"
    from layerprint.runner.lab import run_claims  # trains the runs: the runner, with Hydra

    results = run_claims(uri, args.only)
    rendered = {"json": lambda: json.dumps(results, indent=1), "markdown": lambda: format_markdown(results),
                "table": lambda: format_table(results)}[args.format]()
    print(rendered)
    print(f"layerprint claims: runs logged to {strip_credentials(uri)}, experiment layerprint-claims", file=sys.stderr)
    return 1 if any(r["verdict"] == ERROR for r in results) else 0


def _sync(args: argparse.Namespace) -> int:
    import time

    from layerprint.tracking import spool

    if args.list:
        found = spool.entries()
        for entry in found:
            age_h = (time.time() - entry.modified) / 3600
            print(f"{entry.run_id}  {entry.tracking_uri}  {entry.points} point(s), {entry.artifacts} file(s), "
                  f"last written {age_h:.1f} h ago")
        print(f"layerprint sync: {len(found)} spooled run(s) in {spool.spool_root()}")
        return 0
    if args.drop:
        for run_id in args.drop:
            entry = spool.drop(run_id)
            print(f"layerprint sync: dropped {run_id} ({entry.points} point(s), {entry.artifacts} file(s) "
                  f"meant for {entry.tracking_uri})")
        return 0
    result = spool.sync(args.tracking_uri, send_all=args.all)
    print(f"layerprint sync: {result.runs} run(s), {result.metrics} metric point(s), "
          f"{result.artifacts} artifact(s) sent; {result.remaining} spool file(s) left")
    if result.other_stores:
        stores = ", ".join(f"{uri} ({n})" for uri, n in sorted(result.other_stores.items()))
        print(f"layerprint sync: {sum(result.other_stores.values())} spooled run(s) of other stores left alone: "
              f"{stores}; send them with --tracking-uri URI or --all, see them with --list, "
              "give up on one with --drop RUN_ID")
    return 0 if result.remaining == 0 else 1


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``layerprint``."""
    from layerprint.runner.runtime import exit_without_collecting, quiet_tensorflow

    quiet_tensorflow()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # claims prints its own table
    args = _parser().parse_args(argv)
    try:
        code = {"compare": _compare, "claims": _claims, "sync": _sync, "ui": _ui}[args.command](args)
    except LayerprintError as error:
        from layerprint.tracking.redact import redact

        print(f"layerprint {args.command}: error: {redact(str(error))}", file=sys.stderr)
        sys.exit(2)
    finally:
        exit_without_collecting()
    sys.exit(code)


if __name__ == "__main__":
    main()
