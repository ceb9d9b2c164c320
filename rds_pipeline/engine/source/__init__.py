"""Reading the source: connection, tunnel, diagnostics, discovery, catalog, grants, checks, drift."""
