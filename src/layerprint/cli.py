"""``layerprint``: compare runs, test the seed articles' claims, send spooled points."""

from __future__ import annotations

import argparse
import sys

from layerprint.errors import LayerprintError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerprint", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser("compare", help="which runs started identical and where they diverge")
    compare.add_argument("--experiment", help="compare the layerprint runs of this experiment (default: layerprint)")
    compare.add_argument("--tracking-uri", help="store (default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    compare.add_argument("--run-ids", nargs="+", metavar="ID", help="compare exactly these runs")
    compare.add_argument("--parent", metavar="RUN_ID", help="compare the jobs of this sweep parent run")
    compare.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    compare.add_argument("--out", metavar="DIR", help="also write compare.json/.md/.txt into DIR")
    compare.add_argument("--atol", type=float, default=None, help="absolute loss tolerance (default 1e-6)")
    compare.add_argument("--rtol", type=float, default=None, help="relative loss tolerance (default 1e-5)")

    sync = commands.add_parser("sync", help="send points the callback kept locally to the store")
    sync.add_argument("--tracking-uri", help="store to send to (default: the store each run was meant for)")
    return parser


def _compare(args: argparse.Namespace) -> int:
    from layerprint.compare import DEFAULT_ATOL, DEFAULT_RTOL, compare, render, write_report
    from layerprint.errors import ConfigError
    from layerprint.tracking import resolve_tracking_uri
    from layerprint.train import open_store

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    rtol = DEFAULT_RTOL if args.rtol is None else args.rtol
    if atol < 0 or rtol < 0:
        raise ConfigError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(uri[len("sqlite:///"):]).is_file():
            raise LayerprintError(f"no tracking store at {uri}; run layerprint-train first or give --tracking-uri")
    client = open_store(uri)
    report = compare(client, args.experiment, args.run_ids, args.parent, atol, rtol)
    print(render(report, args.format))
    if args.out:
        write_report(report, args.out)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from layerprint.sync import sync

    result = sync(args.tracking_uri)
    print(f"layerprint sync: {result.runs} run(s), {result.metrics} metric point(s), "
          f"{result.artifacts} artifact(s) sent; {result.remaining} spool file(s) left")
    return 0 if result.remaining == 0 else 1


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``layerprint``."""
    args = _parser().parse_args(argv)
    try:
        code = {"compare": _compare, "sync": _sync}[args.command](args)
    except LayerprintError as error:
        print(f"layerprint {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
