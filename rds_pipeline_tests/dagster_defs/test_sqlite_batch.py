"""The default instance's SQLite event log writes a batch of partition materializations in one transaction per
file (``dagster_defs/sqlite_batch.py``), and Dagster reads them back exactly as it reads events written one by
one: every partition materialized, the latest one last, the counts on it, the events in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from rds_pipeline.dagster_defs import sqlite_batch
from rds_pipeline.dagster_defs.materializations import TableEvents, record_partitions

PARTITIONS = dg.StaticPartitionsDefinition([f"p{i:04d}" for i in range(600)])


@dg.asset(partitions_def=PARTITIONS)
def windows(context) -> None:  # noqa: ANN001 - Dagster reads the annotation, which postponed evaluation hides
    keys = PARTITIONS.get_partition_keys()
    record_partitions(context, context.asset_key, keys[:-1], {"batch_id": "b1", "plan": "history", "rows_inserted": 3})


def count_mirrors(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events each batched index write holds, as they happen."""
    mirrored: list[int] = []
    real = sqlite_batch._mirror

    def counting(storage: Any, conn: Any, events: Any, statements: Any) -> list[int]:
        mirrored.append(len(events))
        return real(storage, conn, events, statements)

    monkeypatch.setattr(sqlite_batch, "_mirror", counting)
    return mirrored


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one by one"])
def test_partitions_recorded_in_a_batch_read_back_as_dagster_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    mirrored = count_mirrors(monkeypatch)
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


@dg.op
def many_tables(context) -> None:  # noqa: ANN001 - Dagster reads the annotation, which postponed evaluation hides
    events = TableEvents(context)
    for i in range(150):
        key = dg.AssetKey(["tick", f"t{i:03d}"])
        check = dg.AssetCheckEvaluation(asset_key=key, check_name="rows", passed=i != 7, metadata={"n": i})
        events.add(key, ["all"], {"batch_id": "b", "plan": "full", "rows_inserted": i}, [check])
    events.flush()


def test_a_tick_over_many_tables_writes_their_events_a_hundred_tables_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 tables' materializations and check results in two writes (100, then 50 tables), read back as Dagster
    reads events written one by one: each table's latest materialization and its check's latest execution."""
    mirrored = count_mirrors(monkeypatch)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.GraphDefinition(name="tick", node_defs=[many_tables]).to_job()
        assert job.execute_in_process(instance=instance).success
        assert mirrored == [200, 100]  # a materialization and a check result per table
        for i in (0, 7, 99, 100, 149):
            key = dg.AssetKey(["tick", f"t{i:03d}"])
            latest = instance.get_latest_materialization_event(key)
            assert latest is not None and latest.asset_materialization is not None
            assert latest.asset_materialization.metadata["rows_inserted"].value == i
            check = dg.AssetCheckKey(key, "rows")
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check]
            assert record.status.value == ("FAILED" if i == 7 else "SUCCEEDED")


@pytest.mark.parametrize("index_fails", [False, True], ids=["one transaction", "index redone one by one"])
def test_check_results_are_written_in_the_index_transaction_or_one_by_one_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_fails: bool
) -> None:
    """Each check's execution record is written by Dagster's own code, on the batch's open index transaction;
    if that transaction fails, the index is redone event by event and each check on its own connection, and
    everything reads back the same."""
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    real_mirror, real_store = sqlite_batch._mirror, SqlEventLogStorage.store_asset_check_event
    lent: list[bool] = []

    def mirror(storage: Any, conn: Any, events: Any, statements: Any) -> list[int]:
        if index_fails and len(events) > 1:
            raise RuntimeError("the index transaction failed")
        return real_mirror(storage, conn, events, statements)

    def store(self: Any, event: Any, event_id: Any) -> None:
        lent.append(getattr(sqlite_batch._lender, "lent", None) is not None)
        real_store(self, event, event_id)

    monkeypatch.setattr(sqlite_batch, "_mirror", mirror)
    monkeypatch.setattr(SqlEventLogStorage, "store_asset_check_event", store)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job = dg.GraphDefinition(name="tick", node_defs=[many_tables]).to_job()
        assert job.execute_in_process(instance=instance).success
        assert len(lent) == 150 and set(lent) == {not index_fails}
        for i in (0, 7, 149):
            key = dg.AssetKey(["tick", f"t{i:03d}"])
            latest = instance.get_latest_materialization_event(key)
            assert latest is not None and latest.asset_materialization is not None
            check = dg.AssetCheckKey(key, "rows")
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check]
            assert record.status.value == ("FAILED" if i == 7 else "SUCCEEDED")
            assert record.event is not None and record.event.dagster_event is not None
            assert record.event.dagster_event.event_specific_data.metadata["n"].value == i  # type: ignore[union-attr]
