"""Log-based replication (CDC): the pgoutput decoder first; slots, snapshot handoff and apply build on it."""
