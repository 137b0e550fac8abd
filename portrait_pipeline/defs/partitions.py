"""Partitions: portraits are cut by draft year (grows with the roster) × style (fixed); keys built and split here."""

import dagster as dg

from portrait_pipeline.styles import STYLES

draft_years = dg.DynamicPartitionsDefinition(name="draft_years")
styles = dg.StaticPartitionsDefinition(list(STYLES))
portrait_partitions = dg.MultiPartitionsDefinition({"draft_year": draft_years, "style": styles})


def portrait_partition_key(draft_year_key: str, style: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"draft_year": draft_year_key, "style": style})


def split_partition_key(key: str) -> tuple[str, str]:
    """(draft year key, style) of a portraits partition: a MultiPartitionKey, or its `2025|default` string
    (a check-only run launched from the check's page carries the plain string)."""
    multi = key if isinstance(key, dg.MultiPartitionKey) else portrait_partitions.get_partition_key_from_str(key)
    dims = multi.keys_by_dimension
    return dims["draft_year"], dims["style"]
