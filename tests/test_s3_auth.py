"""S3 with authentication on (SeaweedFS `-s3.config`): errors name bucket, key and code, never credentials."""

from __future__ import annotations

import socket
import traceback
import uuid

import pytest

from portrait_pipeline.errors import StorageError
from portrait_pipeline.storage import S3ImageStorage
from tests.servers.s3_fixtures import SeaweedEnv, seaweed  # noqa: F401

PNG = b"\x89PNG\r\n\x1a\n" + b"auth test bytes" * 8
WRONG_SECRET = "Wr0ngSecret-" + "x" * 28


def _key(name: str) -> str:
    return f"auth-{uuid.uuid4().hex[:10]}/{name}"


def _everything_said(exc: BaseException) -> str:
    """str, repr and the whole formatted chain (causes included), as a log would show them."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def _assert_no_credentials(exc: BaseException, *secrets: str) -> None:
    said = _everything_said(exc)
    for secret in secrets:
        assert secret not in said


def test_right_keys_work(seaweed: SeaweedEnv) -> None:  # noqa: F811
    storage = seaweed.storage(seaweed.writer)
    key = _key("x.png")
    stored = storage.put(key, PNG, immutable=True)
    assert stored.bucket == "portraits"
    assert storage.get(key) == PNG
    assert storage.exists(key)
    assert storage.list_keys(key.rsplit("/", 1)[0] + "/") == [key]


def test_wrong_secret_names_bucket_key_and_code_but_not_the_secret(seaweed: SeaweedEnv) -> None:  # noqa: F811
    storage = seaweed.storage(seaweed.writer, secret_key=WRONG_SECRET)
    key = _key("x.png")
    with pytest.raises(StorageError) as info:
        storage.put(key, PNG, immutable=True)
    message = str(info.value)
    assert f"s3://portraits/{key}" in message
    assert "SignatureDoesNotMatch" in message
    assert "403" in message
    _assert_no_credentials(info.value, WRONG_SECRET, seaweed.writer.secret_key, seaweed.writer.access_key)

    with pytest.raises(StorageError) as info:
        storage.get(key)
    assert f"s3://portraits/{key}" in str(info.value) and "SignatureDoesNotMatch" in str(info.value)
    _assert_no_credentials(info.value, WRONG_SECRET, seaweed.writer.access_key)

    with pytest.raises(StorageError) as info:  # HEAD: no body, so the code is the HTTP status
        storage.exists(key)
    assert f"s3://portraits/{key}" in str(info.value) and "Forbidden (HTTP 403)" in str(info.value)
    _assert_no_credentials(info.value, WRONG_SECRET, seaweed.writer.access_key)

    with pytest.raises(StorageError) as info:
        storage.list_keys("auth-")
    assert "s3://portraits/auth-" in str(info.value) and "SignatureDoesNotMatch" in str(info.value)
    _assert_no_credentials(info.value, WRONG_SECRET, seaweed.writer.access_key)


def test_unknown_access_key_is_refused(seaweed: SeaweedEnv) -> None:  # noqa: F811
    storage = seaweed.storage(access_key="AKNOSUCHKEY000", secret_key=WRONG_SECRET)
    key = _key("x.png")
    with pytest.raises(StorageError, match="InvalidAccessKeyId") as info:
        storage.put(key, PNG, immutable=False)
    assert f"s3://portraits/{key}" in str(info.value)
    _assert_no_credentials(info.value, WRONG_SECRET, "AKNOSUCHKEY000")


def test_read_only_identity_reads_but_cannot_write(seaweed: SeaweedEnv) -> None:  # noqa: F811
    key = _key("current.png")
    seaweed.storage(seaweed.writer).put(key, PNG, immutable=False)
    reader = seaweed.storage(seaweed.reader)
    assert reader.get(key) == PNG
    assert reader.exists(key)
    assert reader.list_keys(key.rsplit("/", 1)[0] + "/") == [key]
    for immutable in (False, True):
        with pytest.raises(StorageError, match="AccessDenied") as info:
            reader.put(key, b"overwrite attempt", immutable=immutable)
        assert f"s3://portraits/{key}" in str(info.value)
        _assert_no_credentials(info.value, seaweed.reader.secret_key, seaweed.reader.access_key)
    assert reader.get(key) == PNG


def test_identities_are_scoped_to_their_bucket(seaweed: SeaweedEnv) -> None:  # noqa: F811
    client = seaweed.resource(seaweed.writer).get_client()
    other = S3ImageStorage(client, "seaweed-ready")  # exists, but the writer's actions name `portraits` only
    with pytest.raises(StorageError, match=r"s3://seaweed-ready/.*AccessDenied"):
        other.put(_key("x.png"), PNG, immutable=False)


def test_unreachable_endpoint_is_a_storage_error_without_credentials(seaweed: SeaweedEnv) -> None:  # noqa: F811
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    storage = seaweed.storage(seaweed.writer, endpoint_url=dead)
    key = _key("x.png")
    with pytest.raises(StorageError, match="EndpointConnectionError") as info:
        storage.put(key, PNG, immutable=True)
    assert f"s3://portraits/{key}" in str(info.value)
    _assert_no_credentials(info.value, seaweed.writer.secret_key, seaweed.writer.access_key)


def test_resource_repr_hides_credentials(seaweed: SeaweedEnv) -> None:  # noqa: F811
    resource = seaweed.resource(seaweed.writer)
    for text in (repr(resource), str(resource)):
        assert seaweed.writer.secret_key not in text
        assert seaweed.writer.access_key not in text
    assert resource.aws_secret_access_key == seaweed.writer.secret_key  # still usable
