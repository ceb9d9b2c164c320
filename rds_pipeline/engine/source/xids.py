"""The source's transaction ids, 64-bit, for ``method: xmin``: read before the copy, so the bookmark it leaves
(the snapshot's xmin) is never past a row the copy could not see.

``txid_current_snapshot()`` gives 64-bit ids (the 32-bit xid with its wraparound epoch) on every PostgreSQL
this project supports, 12 included (13+ also name the type ``xid8``), and works on a hot standby, where it is
the standby's own snapshot: rows the standby has not replayed yet are read by the next sync.
"""

from __future__ import annotations

import psycopg2.extensions

from rds_pipeline.engine.core.ranges import XidHorizon
from rds_pipeline.engine.core.rows import one


def read_horizon(conn: psycopg2.extensions.connection) -> XidHorizon:
    """This moment's snapshot xmin and next transaction id; ends its (read-only) transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT txid_snapshot_xmin(s)::text, txid_snapshot_xmax(s)::text FROM txid_current_snapshot() AS s")
        snapshot_xmin, next_xid = one(cur.fetchone())
    conn.commit()
    return XidHorizon(snapshot_xmin, next_xid)
