"""Everything Dagster knows about portrait-pipeline, assembled in one place."""

from typing import Any

import dagster as dg

from portrait_pipeline.defs.assets import likeness_descriptions, player_portraits
from portrait_pipeline.defs.checks import portrait_checks
from portrait_pipeline.defs.io_managers import PortraitIOManager
from portrait_pipeline.defs.manifest import portrait_manifest
from portrait_pipeline.defs.partitions import draft_years, portrait_partitions
from portrait_pipeline.defs.resources import resources_from_env
from portrait_pipeline.defs.schedules import draft_class_backfill, nba_refresh
from portrait_pipeline.defs.sensors import batch_collector_sensor, new_prospects_sensor

# Rebuilds the manifest after portraits change (its automation condition); on by default: it costs no API call.
manifest_automation = dg.AutomationConditionSensorDefinition(
    "manifest_automation", target=[portrait_manifest], default_status=dg.DefaultSensorStatus.RUNNING
)

# Jobs the CLI launches; in the UI, materializing an asset's partitions does the same.
portraits_job = dg.define_asset_job("portraits_job", selection=[player_portraits], partitions_def=portrait_partitions)
likeness_job = dg.define_asset_job("likeness_job", selection=[likeness_descriptions], partitions_def=draft_years)


def definitions(resources: dict[str, Any]) -> dg.Definitions:
    """The definitions with `resources`. The CLI builds its own from the environment it runs with: numbers and
    switches are read when the resources are made, so this module's `defs` keep the first importer's."""
    return dg.Definitions(
        assets=[likeness_descriptions, player_portraits, portrait_manifest],
        asset_checks=portrait_checks,
        jobs=[portraits_job, likeness_job],
        sensors=[new_prospects_sensor, batch_collector_sensor, manifest_automation],
        schedules=[draft_class_backfill, nba_refresh],
        resources={**resources, "image_io_manager": PortraitIOManager(storage=resources["storage"])},
    )


defs = definitions(resources_from_env())
