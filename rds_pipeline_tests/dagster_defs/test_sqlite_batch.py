"""The default instance's SQLite event log writes a batch of partition materializations in one transaction per
file (``dagster_defs/sqlite_batch.py``), and Dagster reads them back exactly as it reads events written one by
one: every partition materialized, the latest one last, the counts on it, the events in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from rds_pipeline.dagster_defs import sqlite_batch
from rds_pipeline.dagster_defs.materializations import record_partitions

PARTITIONS = dg.StaticPartitionsDefinition([f"p{i:04d}" for i in range(600)])


@dg.asset(partitions_def=PARTITIONS)
def windows(context) -> None:  # noqa: ANN001 - Dagster reads the annotation, which postponed evaluation hides
    keys = PARTITIONS.get_partition_keys()
    record_partitions(context, context.asset_key, keys[:-1], {"batch_id": "b1", "plan": "history", "rows_inserted": 3})


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one by one"])
def test_partitions_recorded_in_a_batch_read_back_as_dagster_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    mirrored: list[int] = []
    real = sqlite_batch._mirror

    def counting(storage: Any, conn: Any, events: Any, statements: Any) -> None:
        mirrored.append(len(events))
        real(storage, conn, events, statements)

    monkeypatch.setattr(sqlite_batch, "_mirror", counting)
    if not batched:
        monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")  # Dagster's own path: each event on its own
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
        result = dg.materialize([windows], instance=instance, partition_key="p0599")
        assert result.success
        key = dg.AssetKey("windows")
        assert instance.get_materialized_partitions(key) == set(PARTITIONS.get_partition_keys())
        records = instance.fetch_materializations(key, limit=1000).records
        assert len(records) == 600
        latest = instance.get_latest_materialization_event(key)
        assert latest is not None and latest.dagster_event is not None
        assert latest.dagster_event.partition == "p0599"  # the step's own output, after the recorded ones
        counted = [r for r in records if "rows_inserted" in r.asset_materialization.metadata]  # type: ignore[union-attr]
        assert [r.partition_key for r in counted] == ["p0598"]
        ordered = [r.partition_key for r in reversed(records)]
        assert ordered[:3] == ["p0000", "p0001", "p0002"]
        assert mirrored == ([599] if batched else [])
