"""The Dagster layer: a thin shell over ``rds_pipeline.engine``, built from the cached catalog only."""
