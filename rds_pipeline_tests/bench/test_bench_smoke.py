"""Smoke runs of the benchmarks, so they cannot rot (the real figures come from `make bench`)."""

from __future__ import annotations

from pathlib import Path

from bench import bench_discovery, run_all


def test_discovery_benchmark_smoke() -> None:
    result = bench_discovery.run(tables=200)
    assert result["tables"] == 200 and result["columns"] == 2000
    assert float(result["discover_and_write_seconds"]) < 30  # a smoke bound, not the target


def test_make_bench_smoke_writes_the_report(tmp_path: Path) -> None:
    report = run_all.run(rows=20_000, big_rows=50_000, rounds=1, smoke=True)
    run_all.write_report(report, tmp_path, "smoke")
    text = (tmp_path / "REPORT.md").read_text()
    assert (
        "| raw pipe (psql | psql) |" in text
        and "| rds_pipeline through Dagster |" in text
        and "| rds-pipeline sync (through Dagster) |" in text
    )
    assert "1,000 found and upserted" in text
    assert "s on the default instance, " in text and "x its full-table sync" in text
    assert report["windows"]["windows"] > 900 and report["windows"]["default_ratio"] > 0
    assert report["verify"]["ranges"] > 10 and "x the time of one full-table copy" in text
    if "pages" in report:  # root only (network namespaces): chunks of pages over the rate-limited link
        assert report["pages"]["keyed_by"] == "uuid" and "in chunks of pages" in text
    assert (tmp_path / "chart.png").stat().st_size > 10_000
    engine = next(r for r in report["pg_to_pg"] if r["name"] == "rds_pipeline engine")
    assert engine["rows_per_s"] > 0 and engine["peak_rss_mb"] < 300


def test_tick_benchmark_smoke() -> None:
    from bench import bench_tick

    result = bench_tick.run(tables=12, rows=100)
    assert result["tables"] == 12
    assert float(result["cli_sync_seconds"]) > 0 and float(result["launched_run_seconds"]) > 0  # type: ignore[arg-type]
    assert float(result["default_sync_seconds"]) > 0  # type: ignore[arg-type]
    assert float(result["psql_loop_seconds"]) > 0  # type: ignore[arg-type]


def test_snapshot_benchmark_smoke(tmp_path: Path) -> None:
    from bench import bench_snapshot

    report = bench_snapshot.measure(rows=60_000, chunks=4, rate=500)
    text = bench_snapshot.write(report, tmp_path)
    runs = {r["mode"]: r for r in report["runs"]}
    assert set(runs) == {"exported", "chunked"} and "| chunked |" in text
    assert all(r["rows_copied"] >= 60_000 and r["changes_written"] > 0 for r in runs.values())


def test_cdc_benchmark_smoke() -> None:
    """Both native anchors, ours, the CPU per process and the lag, on a few thousand changes."""
    from bench import bench_cdc

    result = bench_cdc.run(rows=20_000, changes=30_000, rate=500, seconds=4)
    text = bench_cdc.report(result)
    assert "| the same, `binary = true` |" in text and "| rds_pipeline log-based (engine) |" in text
    assert result["applied"]["insert"] == 18_000 and result["applied"]["update"] > 0  # (rows equal: checked inside)
    ours = result["cpu"]["ours"]
    assert ours["consumer"] > 0 and ours["walsender"] > 0 and ours["destination"] > 0
    assert result["cpu"]["native"]["destination"] > 0 and result["lag"]["samples"] > 0
