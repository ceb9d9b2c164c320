"""Benchmark: Dagster definitions load for N selected tables, from a synthetic catalog file (no source needed).

    .venv/bin/python -m bench.bench_definitions --tables 2000

The catalog mimics discovery of N tables x 10 columns in 20 schemas, with a mix of methods (full table,
key-based on a timestamp, key-based on an integer). Timed in a fresh process: import, build, resolve the graph.
Target (issue 5): under 5 s for 2,000 tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rds_pipeline.engine.source.catalog import Catalog, Column, Relation

COLUMNS = (
    ("id", "bigint", "N"),
    ("n", "integer", "N"),
    ("amount", "numeric(12,2)", "N"),
    ("body", "text", "S"),
    ("code", "character varying(32)", "S"),
    ("tags", "text[]", "A"),
    ("doc", "jsonb", "U"),
    ("created", "timestamp with time zone", "D"),
    ("local_ts", "timestamp without time zone", "D"),
    ("flag", "boolean", "B"),
)


def write_project(directory: Path, tables: int) -> Path:
    relations, entries = [], []
    for i in range(tables):
        schema, name = f"s{i % 20:02d}", f"t{i:05d}"
        columns = tuple(
            Column(
                c,
                t,
                c != "id",
                kind="array" if cat == "A" else "base",
                category=cat,
                base_type="text" if cat == "A" else None,
            )
            for c, t, cat in COLUMNS
        )
        relations.append(
            Relation(
                "bench",
                schema,
                name,
                "table",
                columns,
                primary_key=("id",),
                replication_key_candidates=("id", "created"),
                indexed_columns=("id",),
                row_estimate=5_000_000,
                size_bytes=10**9,
                key_stats=(("id", "1", "5000000"), ("created", "2024-01-01 00:00:00+00", "2024-12-31 00:00:00+00")),
            )
        )
        entry: dict[str, object] = {"name": f"{schema}.{name}"}
        if i % 3 == 1:
            entry.update(method="key_based", replication_key="created", granularity="monthly")
        elif i % 3 == 2:
            entry.update(method="key_based", replication_key="id")
        entries.append(entry)
    Catalog(relations, ["bench"], "18.0").save(directory / "rds_pipeline_catalog.json")
    path = directory / "rds_pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "integration_name": "bench",
                "source": {"host": "127.0.0.1", "port": 1, "user": "u", "password": "p", "database": "bench"},
                "destination": {"type": "duckdb", "path": "x.duckdb"},
                "tables": entries,
            }
        )
    )
    return path


CHILD = """
import time, json, sys
started = time.monotonic()
from rds_pipeline.dagster_defs.definitions import build_definitions
imported = time.monotonic()
defs = build_definitions(sys.argv[1])
graph = defs.resolve_asset_graph()
jobs = defs.resolve_all_job_defs()
done = time.monotonic()
print(json.dumps({"import_seconds": imported - started, "build_and_resolve_seconds": done - imported,
                  "total_seconds": done - started, "assets": len(graph.get_all_asset_keys()), "jobs": len(jobs),
                  "schedules": len(defs.schedules or [])}))
"""


def run(tables: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_project(Path(tmp), tables)
        runs = []
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True, env={**os.environ}
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = sorted(runs, key=lambda r: r["total_seconds"])[1]
        return {"tables": tables, **{k: round(v, 3) if isinstance(v, float) else v for k, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=2000)
    args = parser.parse_args()
    started = time.monotonic()
    print(json.dumps(run(args.tables), indent=2))
    print(f"(benchmark wall time {time.monotonic() - started:.1f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
