"""Partitions: portraits are cut by draft year (grows with the roster) × style (fixed)."""

import dagster as dg

from portrait_pipeline.styles import STYLES

draft_years = dg.DynamicPartitionsDefinition(name="draft_years")
styles = dg.StaticPartitionsDefinition(list(STYLES))
portrait_partitions = dg.MultiPartitionsDefinition({"draft_year": draft_years, "style": styles})


def portrait_partition_key(draft_year_key: str, style: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"draft_year": draft_year_key, "style": style})
