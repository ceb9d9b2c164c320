"""The ``rds-pipeline`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rds_pipeline.engine.config import ConfigError, load_config
from rds_pipeline.engine.errors import ConnectionProblem, RdsPipelineError


def _test_connection(args: argparse.Namespace) -> int:
    from rds_pipeline.engine.diagnostics import run_connection_test

    config = load_config(args.config)
    target = f"{config.source.user}@{config.source.host}:{config.source.port}/{config.source.database}"
    if config.source.ssh:
        target += f" via SSH {config.source.ssh.user}@{config.source.ssh.host}:{config.source.ssh.port}"
    print(f"Testing connection to {target} (ssl mode {config.source.ssl.mode}) ...", flush=True)
    report = run_connection_test(config.source)
    for line in report.lines():
        print(line)
    print("Connection test passed.")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rds_pipeline.demo import start_demo_source
    from rds_pipeline.engine.diagnostics import run_connection_test

    setup = start_demo_source(Path(args.dir).resolve())
    print(f"Demo source: embedded PostgreSQL on 127.0.0.1:{setup.server.port}, database pagila")
    print(f"Demo config: {setup.config_path}")
    config = load_config(setup.config_path)
    for line in run_connection_test(config.source).lines():
        print(line)
    if not args.keep_running:
        setup.server.stop()
        print("Demo server stopped (run with --keep-running to leave it up).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log debug detail (never secrets)")
    common.add_argument(
        "--config", help="path of rds_pipeline.yaml (default: $RDS_PIPELINE_CONFIG, else ./rds_pipeline.yaml)"
    )
    parser = argparse.ArgumentParser(prog="rds-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    test = sub.add_parser(
        "test-connection", parents=[common], help="connect to the source; report version, SSL and replica status"
    )
    test.set_defaults(func=_test_connection)

    demo = sub.add_parser("demo", parents=[common], help="run the demo on an embedded PostgreSQL loaded with Pagila")
    demo.add_argument("--dir", default=".demo", help="demo working folder (default .demo)")
    demo.add_argument("--keep-running", action="store_true", help="leave the demo server running afterwards")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ConnectionProblem as exc:
        print(f"Connection test FAILED [{exc.kind}]: {exc.message}\nFix: {exc.fix}", file=sys.stderr)
        return 1
    except RdsPipelineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
