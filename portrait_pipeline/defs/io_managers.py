"""The image IO manager: portraits live in storage as PNGs, with a JSON index per partition, never pickles."""

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict

import dagster as dg

from portrait_pipeline.defs.partitions import split_partition_key
from portrait_pipeline.defs.resources import ImageStorageResource
from portrait_pipeline.errors import StorageError
from portrait_pipeline.generation.partition import Portrait
from portrait_pipeline.naming import partition_index_key
from portrait_pipeline.storage import ImageStorage


class StoredPortraits(Mapping[int, bytes]):
    """Player id → PNG bytes, read from storage only when asked (memory stays flat)."""

    def __init__(self, storage: ImageStorage, portraits: list[Portrait]) -> None:
        self._storage = storage
        self.portraits = {portrait.player_id: portrait for portrait in portraits}

    def __getitem__(self, player_id: int) -> bytes:
        return self._storage.get(self.portraits[player_id].key)

    def __iter__(self) -> Iterator[int]:
        return iter(self.portraits)

    def __len__(self) -> int:
        return len(self.portraits)


class PortraitIOManager(dg.ConfigurableIOManager):
    """Hands `player_portraits` to downstream assets through the same storage the images were written to."""

    storage: dg.ResourceDependency[ImageStorageResource]

    def handle_output(self, context: dg.OutputContext, obj: list[Portrait]) -> None:
        storage = self.storage.get_storage()
        # The engine stored each image the moment it was made; check rather than trust.
        missing = [portrait.key for portrait in obj if not storage.exists(portrait.key)]
        if missing:
            raise StorageError(f"{len(missing)} portrait(s) missing from {storage.location}: {missing[:5]}")
        key = partition_index_key(*split_partition_key(context.partition_key))
        payload = json.dumps([asdict(portrait) for portrait in obj], indent=1).encode()
        stored = storage.put(key, payload, immutable=False, content_type="application/json")
        context.add_output_metadata(
            {
                "storage": storage.location,
                "bucket": storage.bucket or "(local)",
                "index_key": stored.key,
                "images": len(obj),
                "keys": dg.MetadataValue.json([portrait.key for portrait in obj][:200]),
                "public_urls": dg.MetadataValue.json([portrait.public_url for portrait in obj][:200]),
            }
        )

    def load_input(self, context: dg.InputContext) -> StoredPortraits:
        storage = self.storage.get_storage()
        portraits: list[Portrait] = []
        for partition_key in context.asset_partition_keys:
            key = partition_index_key(*split_partition_key(partition_key))
            if storage.exists(key):
                portraits.extend(Portrait(**row) for row in json.loads(storage.get(key)))
        return StoredPortraits(storage, portraits)
