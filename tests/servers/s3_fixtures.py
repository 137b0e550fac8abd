"""Session-scoped pytest fixtures around one SeaweedFS server with authentication on.

Import the fixture into a test module:

    from tests.servers.s3_fixtures import seaweed  # noqa: F401

pytest makes one fixture definition per module that imports it, so each of those would start its own
server; the definitions therefore share one module-level server, started on first use and stopped when
the last of them is torn down at the end of the session: one `weed` process per test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from portrait_pipeline.defs.s3 import PortraitS3Resource
from portrait_pipeline.storage import S3ImageStorage

from .seaweedfs import S3Identity, SeaweedS3

BUCKET = "portraits"


@dataclass(frozen=True)
class SeaweedEnv:
    """The running server and its identities: `writer` (read/write/list) and `reader` (read/list)."""

    server: SeaweedS3
    writer: S3Identity
    reader: S3Identity
    bucket: str = BUCKET

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def resource(
        self,
        identity: S3Identity | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        endpoint_url: str | None = None,
        max_attempts: int = 1,
    ) -> PortraitS3Resource:
        ident = identity or self.writer
        return PortraitS3Resource(
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=access_key or ident.access_key,
            aws_secret_access_key=secret_key or ident.secret_key,
            max_attempts=max_attempts,
        )

    def storage(
        self,
        identity: S3Identity | None = None,
        *,
        public_url_base: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        endpoint_url: str | None = None,
    ) -> S3ImageStorage:
        resource = self.resource(identity, access_key=access_key, secret_key=secret_key, endpoint_url=endpoint_url)
        return S3ImageStorage(resource.get_client(), self.bucket, public_url_base=public_url_base)

    def client(self, identity: S3Identity | None = None) -> Any:
        """A plain boto3 client, independent of the code under test, to look at what really is in the bucket."""
        return self.server.client((identity or self.writer).name)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix`: for tests whose keys are fixed (`players/...`), not random."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                client.delete_object(Bucket=self.bucket, Key=item["Key"])


_shared: SeaweedEnv | None = None
_users = 0


def _acquire() -> SeaweedEnv:
    global _shared, _users
    if _shared is None:
        writer = S3Identity.generate("writer", [f"Read:{BUCKET}", f"Write:{BUCKET}", f"List:{BUCKET}"])
        reader = S3Identity.generate("reader", [f"Read:{BUCKET}", f"List:{BUCKET}"])
        server = SeaweedS3(identities=[writer, reader], buckets=[BUCKET]).start()
        _shared = SeaweedEnv(server=server, writer=writer, reader=reader)
    _users += 1
    return _shared


def _release() -> None:
    global _shared, _users
    _users -= 1
    if _users <= 0 and _shared is not None:
        server, _shared, _users = _shared.server, None, 0
        server.stop()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedEnv]:
    """One `weed mini` for the whole test session, authentication on, bucket `portraits` created."""
    env = _acquire()
    try:
        yield env
    finally:
        _release()
