"""Smoke runs of the benchmarks, so they cannot rot (the real figures come from `python -m bench.…`)."""

from __future__ import annotations

from bench import bench_discovery


def test_discovery_benchmark_smoke() -> None:
    result = bench_discovery.run(tables=200)
    assert result["tables"] == 200 and result["columns"] == 2000
    assert float(result["discover_and_write_seconds"]) < 30  # a smoke bound, not the target
