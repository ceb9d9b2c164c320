"""Moving rows: plan the ranges, extract by COPY, sync (load and bookmark), verify."""
