"""Where rows land: the shared protocol and state rules (base), PostgreSQL and DuckDB."""
