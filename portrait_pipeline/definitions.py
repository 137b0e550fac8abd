"""Everything Dagster knows about portrait-pipeline, assembled in one place."""

import dagster as dg

from portrait_pipeline.assets import player_portraits
from portrait_pipeline.io_managers import PortraitIOManager
from portrait_pipeline.resources import resources_from_env

resources = resources_from_env()

defs = dg.Definitions(
    assets=[player_portraits],
    resources={**resources, "image_io_manager": PortraitIOManager(storage=resources["storage"])},
)
