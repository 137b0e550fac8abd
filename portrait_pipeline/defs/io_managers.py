"""The image IO manager: portraits live in storage as PNGs, with a JSON index per partition, never pickles."""

from collections.abc import Iterator, Mapping

import dagster as dg

from portrait_pipeline.audit.serving import Portrait, read_index, write_index
from portrait_pipeline.defs.partitions import split_partition_key
from portrait_pipeline.defs.resources import ImageStorageResource
from portrait_pipeline.errors import StorageError
from portrait_pipeline.storage import ImageStorage


class StoredPortraits(Mapping[tuple[int, str], bytes]):
    """(player id, style) → PNG bytes, read from storage only when asked (memory stays flat); `portraits` lists
    what the partitions' indexes hold (URLs, checksums, sizes) without reading any image."""

    def __init__(self, storage: ImageStorage, portraits: list[Portrait]) -> None:
        self._storage = storage
        self.portraits = portraits
        self._by_key = {(portrait.player_id, portrait.style): portrait for portrait in portraits}

    def __getitem__(self, key: tuple[int, str]) -> bytes:
        return self._storage.get(self._by_key[key].key)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)


class PortraitIOManager(dg.ConfigurableIOManager):
    """Hands `player_portraits` to downstream assets through the same storage the images were written to."""

    storage: dg.ResourceDependency[ImageStorageResource]

    def handle_output(self, context: dg.OutputContext, obj: list[Portrait]) -> None:
        storage = self.storage.get_storage()
        # The engine stored each image the moment it was made; check rather than trust.
        missing = [portrait.key for portrait in obj if not storage.exists(portrait.key)]
        if missing:
            raise StorageError(f"{len(missing)} portrait(s) missing from {storage.location}: {missing[:5]}")
        stored = write_index(storage, *split_partition_key(context.partition_key), obj)
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
        """The indexed portraits of every partition asked for (all of them for an unpartitioned reader)."""
        storage = self.storage.get_storage()
        keys = context.asset_partition_keys if context.has_asset_partitions else []
        portraits = [p for key in keys for p in read_index(storage, *split_partition_key(key))]
        return StoredPortraits(storage, portraits)
