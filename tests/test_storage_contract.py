"""The storage contract, run against every backend: a local folder and S3 (a real SeaweedFS server)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from portrait_pipeline.errors import StorageError
from portrait_pipeline.storage import (
    ALIAS_CACHE_CONTROL,
    IMMUTABLE_CACHE_CONTROL,
    PROBE_PREFIX,
    ImageStorage,
    LocalImageStorage,
    S3ImageStorage,
    sha256_hex,
)
from tests.servers.s3_fixtures import SeaweedEnv, seaweed  # noqa: F401

PNG_A = b"\x89PNG\r\n\x1a\n" + b"first image bytes" * 10
PNG_B = b"\x89PNG\r\n\x1a\n" + b"second, different bytes" * 10
CDN = "https://cdn.example.test/portraits"


@dataclass
class Backend:
    name: str
    make: Callable[..., ImageStorage]
    prefix: str  # unique per test: the S3 bucket is shared by the whole session

    def key(self, rest: str) -> str:
        return f"{self.prefix}{rest}"


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    prefix = f"contract-{uuid.uuid4().hex[:10]}/"
    if request.param == "local":

        def make_local(public_url_base: str | None = None) -> ImageStorage:
            return LocalImageStorage(tmp_path / "images", public_url_base=public_url_base)

        return Backend("local", make_local, prefix)
    env: SeaweedEnv = request.getfixturevalue("seaweed")

    def make_s3(public_url_base: str | None = None) -> ImageStorage:
        return env.storage(public_url_base=public_url_base)

    return Backend("s3", make_s3, prefix)


# -- the contract, both backends ---------------------------------------------------------------------


def test_put_get_round_trip(backend: Backend) -> None:
    storage = backend.make()
    key = backend.key("players/1/abc.png")
    stored = storage.put(key, PNG_A, immutable=True)
    assert storage.get(key) == PNG_A
    assert stored.key == key
    assert stored.sha256 == sha256_hex(PNG_A) == hashlib.sha256(PNG_A).hexdigest()
    assert stored.size == len(PNG_A)
    assert stored.bucket == storage.bucket
    assert stored.public_url == storage.public_url(key)


def test_public_url_uses_the_configured_base(backend: Backend) -> None:
    storage = backend.make(public_url_base=CDN + "/")
    key = backend.key("players/1/abc.png")
    assert storage.public_url(key) == f"{CDN}/{key}"
    assert storage.put(key, PNG_A, immutable=True).public_url == f"{CDN}/{key}"


def test_immutable_put_twice_is_fine_and_keeps_the_first_bytes(backend: Backend) -> None:
    storage = backend.make()
    key = backend.key("players/2/sha.png")
    first = storage.put(key, PNG_A, immutable=True)
    again = storage.put(key, PNG_A, immutable=True)
    assert again == first
    storage.put(key, PNG_B, immutable=True)  # never replaces an immutable object
    assert storage.get(key) == PNG_A


def test_current_alias_is_overwritten(backend: Backend) -> None:
    storage = backend.make()
    key = backend.key("players/3/current.png")
    storage.put(key, PNG_A, immutable=False)
    stored = storage.put(key, PNG_B, immutable=False)
    assert storage.get(key) == PNG_B
    assert stored.sha256 == sha256_hex(PNG_B)
    assert stored.size == len(PNG_B)


def test_exists_and_list_keys_by_prefix(backend: Backend) -> None:
    storage = backend.make()
    keys = [backend.key("a/1.png"), backend.key("a/2.png"), backend.key("ab/3.png"), backend.key("b/4.png")]
    for key in keys:
        storage.put(key, PNG_A, immutable=True)
    assert storage.exists(keys[0])
    assert not storage.exists(backend.key("a/missing.png"))
    assert storage.list_keys(backend.key("a/")) == keys[:2]
    assert storage.list_keys(backend.key("a")) == keys[:3]
    assert storage.list_keys(backend.prefix) == sorted(keys)
    assert storage.list_keys(backend.key("nothing/")) == []


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "a/./b", "", "a\\b", "a/"])
def test_unsafe_keys_are_refused(backend: Backend, key: str) -> None:
    storage = backend.make()
    with pytest.raises(StorageError, match="unsafe storage key"):
        storage.put(key, PNG_A, immutable=True)
    for call in (storage.get, storage.exists, storage.public_url):
        with pytest.raises(StorageError, match="unsafe storage key"):
            call(key)


def test_missing_key_is_a_storage_error(backend: Backend) -> None:
    storage = backend.make()
    key = backend.key("players/404/none.png")
    with pytest.raises(StorageError) as info:
        storage.get(key)
    assert key in str(info.value)


def test_delete_removes_a_key_and_a_missing_key_is_no_error(backend: Backend) -> None:
    storage = backend.make()
    key, other = backend.key("gone/x.png"), backend.key("kept/y.png")
    storage.put(key, PNG_A, immutable=False)
    storage.put(other, PNG_A, immutable=False)
    storage.delete(key)
    assert not storage.exists(key) and storage.exists(other)
    storage.delete(key)  # already gone: nothing to do
    assert storage.list_keys(backend.prefix) == [other]


def test_check_ready_writes_and_deletes_its_probe(backend: Backend) -> None:
    storage = backend.make()
    storage.check_ready()
    assert storage.list_keys(PROBE_PREFIX) == []  # the probe was deleted again
    if isinstance(storage, LocalImageStorage):
        assert list(storage.root.iterdir()) == []  # nor its folder, nor a temp file


# -- S3 specifics ------------------------------------------------------------------------------------


def _head(env: SeaweedEnv, key: str) -> dict[str, Any]:
    client = env.resource().get_client()
    head: dict[str, Any] = client.head_object(Bucket=env.bucket, Key=key)
    return head


def test_s3_headers_content_type_and_cache_control(seaweed: SeaweedEnv) -> None:  # noqa: F811
    storage = seaweed.storage()
    prefix = f"headers-{uuid.uuid4().hex[:10]}"
    immutable_key, alias_key = f"{prefix}/sha.png", f"{prefix}/current.png"
    storage.put(immutable_key, PNG_A, immutable=True)
    storage.put(alias_key, PNG_A, immutable=False)
    storage.put(f"{prefix}/meta.json", b"{}", immutable=False, content_type="application/json")

    head = _head(seaweed, immutable_key)
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == IMMUTABLE_CACHE_CONTROL == "public, max-age=31536000, immutable"
    assert head["ContentLength"] == len(PNG_A)
    assert head["ETag"].strip('"') == hashlib.md5(PNG_A).hexdigest()

    head = _head(seaweed, alias_key)
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == ALIAS_CACHE_CONTROL
    assert _head(seaweed, f"{prefix}/meta.json")["ContentType"] == "application/json"


def test_s3_location_and_default_public_url(seaweed: SeaweedEnv) -> None:  # noqa: F811
    storage = seaweed.storage()
    assert storage.bucket == "portraits"
    assert storage.location == "s3://portraits"
    assert storage.public_url("players/1/x.png") == f"{seaweed.endpoint_url}/portraits/players/1/x.png"


def test_s3_without_conditional_put_still_keeps_the_first_bytes(seaweed: SeaweedEnv) -> None:  # noqa: F811
    client = seaweed.resource().get_client()
    storage = S3ImageStorage(client, seaweed.bucket, conditional_put=False)
    key = f"nocond-{uuid.uuid4().hex[:10]}/sha.png"
    storage.put(key, PNG_A, immutable=True)
    storage.put(key, PNG_B, immutable=True)
    assert storage.get(key) == PNG_A


def test_seaweedfs_enforces_if_none_match_and_content_md5(seaweed: SeaweedEnv) -> None:  # noqa: F811
    """What S3ImageStorage relies on: the server refuses a second conditional put and a wrong digest."""
    client = seaweed.resource().get_client()
    key = f"server-{uuid.uuid4().hex[:10]}/x.png"
    client.put_object(Bucket=seaweed.bucket, Key=key, Body=PNG_A, IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=seaweed.bucket, Key=key, Body=PNG_B, IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"

    wrong_md5 = base64.b64encode(hashlib.md5(PNG_B).digest()).decode()
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=seaweed.bucket, Key=f"{key}.bad", Body=PNG_A, ContentMD5=wrong_md5)
    assert info.value.response["Error"]["Code"] == "BadDigest"
    wrong_sha = base64.b64encode(hashlib.sha256(PNG_B).digest()).decode()
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=seaweed.bucket, Key=f"{key}.bad", Body=PNG_A, ChecksumSHA256=wrong_sha)
    assert info.value.response["Error"]["Code"] == "BadDigest"
    assert not S3ImageStorage(client, seaweed.bucket).exists(f"{key}.bad")


def test_s3_get_refuses_a_body_that_does_not_match_its_etag(seaweed: SeaweedEnv) -> None:  # noqa: F811
    """Bytes rotted on the volume server: SeaweedFS serves them under the old ETag, get() must refuse them."""
    original, rotten = random.Random(1).randbytes(4096), random.Random(2).randbytes(4096)  # incompressible
    storage = seaweed.storage()
    key = f"rot-{uuid.uuid4().hex[:10]}/x.png"
    storage.put(key, original, immutable=True)
    seaweed.server.rot_object(seaweed.bucket, key, rotten)

    served = seaweed.client().get_object(Bucket=seaweed.bucket, Key=key)
    assert served["Body"].read() == rotten  # what the check is for: the server does not notice
    etag = hashlib.md5(original).hexdigest()
    assert served["ETag"].strip('"') == etag
    message = f"corrupted read of s3://portraits/{key}: body MD5 differs from ETag {etag}"
    with pytest.raises(StorageError, match=re.escape(message)):
        storage.get(key)


def test_s3_read_only_identity_fails_the_readiness_check_with_the_service_code(seaweed: SeaweedEnv) -> None:  # noqa: F811
    """The reader may HEAD and LIST the bucket: only writing the probe shows it cannot store an image."""
    with pytest.raises(StorageError) as info:
        seaweed.storage(seaweed.reader).check_ready()
    message = str(info.value)
    assert "bucket s3://portraits is not writable with these credentials" in message
    assert f"cannot write s3://portraits/{PROBE_PREFIX}" in message and "AccessDenied (HTTP 403)" in message
    assert seaweed.reader.secret_key not in message


# -- local specifics ---------------------------------------------------------------------------------


def test_local_unwritable_folder_is_a_storage_error(tmp_path: Path) -> None:
    # Tests run as root, where chmod does not block writes: make the root's parent a regular file instead.
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    storage = LocalImageStorage(blocker / "images")
    with pytest.raises(StorageError, match="cannot write"):
        storage.put("players/1/x.png", PNG_A, immutable=False)
    with pytest.raises(StorageError, match="cannot read"):
        storage.get("players/1/x.png")
    assert not storage.exists("players/1/x.png")
    assert storage.list_keys("") == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_local_images_get_the_process_umask_like_any_file(tmp_path: Path, umask: int, mode: int) -> None:
    """A web server reading the folder must be able to serve the images (mkstemp wrote them 0600)."""
    previous = os.umask(umask)
    try:
        storage = LocalImageStorage(tmp_path / "images")
        storage.put("players/1/x.png", PNG_A, immutable=True)
        storage.put("players/1/current.png", PNG_A, immutable=False)
    finally:
        os.umask(previous)
    for key in ("players/1/x.png", "players/1/current.png"):
        assert (storage.path_for(key).stat().st_mode & 0o777) == mode


def test_concurrent_readiness_probes_of_one_folder_all_pass(tmp_path: Path) -> None:
    """Partition runs of one CLI start together and each probes the folder: a probe's delete removes the emptied
    `_probe/` folder, which another run had just made for its own probe (seen once in 4 offline `--all` runs)."""
    storage = LocalImageStorage(tmp_path / "images")
    errors: list[str] = []

    def probe_often() -> None:
        for _ in range(300):
            try:
                storage.check_ready()
            except StorageError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=probe_often) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storage.list_keys(PROBE_PREFIX) == []
