"""Where image bytes live: one interface, a local folder backend and an S3 backend, one key scheme."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from portrait_pipeline.errors import StorageError

PNG = "image/png"
# The readiness check writes and deletes one object here; no pipeline key starts with it.
PROBE_PREFIX = "_probe/"
FOLDER_ATTEMPTS = 5  # a folder removed under a write (see LocalImageStorage._create) is made again this often


@dataclass(frozen=True)
class StoredObject:
    """What a write left behind: enough to audit it and to serve it."""

    bucket: str | None
    key: str
    public_url: str
    sha256: str
    size: int


class ImageStorage(Protocol):
    """The storage contract every backend passes (see tests/test_storage_contract.py)."""

    @property
    def bucket(self) -> str | None: ...

    @property
    def location(self) -> str:
        """Human-readable place, for logs and metadata: a folder or `s3://bucket`."""
        ...

    def put(self, key: str, data: bytes, *, immutable: bool, content_type: str = PNG) -> StoredObject:
        """Write `data` at `key`; an immutable key is written once and never replaced."""
        ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def public_url(self, key: str) -> str: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None:
        """Remove `key` if it is there (only the readiness probe deletes: images are never removed)."""
        ...

    def check_ready(self) -> None:
        """Fail fast, before any generation is paid for, when the storage cannot be written."""
        ...


def write_probe(storage: ImageStorage) -> None:
    """Put and delete one small object under PROBE_PREFIX: looking (HEAD, LIST) is not proof of writing.

    A read-only identity passes a HEAD on the bucket, then every paid image fails to store; the probe turns
    that into a refusal before the first call. Raises StorageError naming the service's refusal.
    """
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}.txt"
    storage.put(key, b"portrait-pipeline write check\n", immutable=False, content_type="text/plain")
    storage.delete(key)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> str:
    """Refuse keys that could escape the storage root or the bucket prefix."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise StorageError(f"unsafe storage key {key!r}")
    return key


class LocalImageStorage:
    """Images in a folder (development and the embedded default); same keys as S3."""

    def __init__(self, root: Path, public_url_base: str | None = None) -> None:
        self.root = root.resolve()
        self._public_url_base = public_url_base

    @property
    def bucket(self) -> str | None:
        return None

    @property
    def location(self) -> str:
        return str(self.root)

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, *, immutable: bool, content_type: str = PNG) -> StoredObject:
        path = self.path_for(key)
        digest = sha256_hex(data)
        if immutable and path.exists():
            # Immutable keys are content-addressed: an existing object already holds these bytes.
            return self._stored(key, digest, len(data))
        try:
            # Write beside the target, then rename: a crash never leaves a half-written image. `open(..., "xb")`
            # creates with mode 0666 less the umask, like any file (mkstemp's 0600 kept web servers out).
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with self._create(tmp) as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written = path.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        if written != len(data):
            raise StorageError(f"short write to {path}: {written} of {len(data)} bytes")
        return self._stored(key, digest, len(data))

    @staticmethod
    def _create(path: Path) -> BinaryIO:
        """A new file at `path`, in a folder made for it. A `delete` in another thread removes a folder it emptied
        (the runs of one CLI probe `_probe/` together): made again if it went between the mkdir and the open."""
        attempts = FOLDER_ATTEMPTS
        while True:
            try:
                # (mkdir's exist_ok finds "exists" and then no folder when the removal falls in between)
                path.parent.mkdir(parents=True, exist_ok=True)
                return open(path, "xb")
            except (FileNotFoundError, FileExistsError):
                attempts -= 1
                if not attempts:
                    raise

    def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"no image at {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def public_url(self, key: str) -> str:
        if self._public_url_base:
            return f"{self._public_url_base.rstrip('/')}/{check_key(key)}"
        return self.path_for(key).as_uri()

    def list_keys(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from exc
        if path.parent != self.root:
            with contextlib.suppress(OSError):  # not empty: other objects still live there
                path.parent.rmdir()

    def check_ready(self) -> None:
        try:
            write_probe(self)
        except StorageError as exc:
            raise StorageError(
                f"image folder {self.root} is not writable ({exc}): set IMAGE_LOCAL_DIR to a folder you can write to"
            ) from None

    def _stored(self, key: str, digest: str, size: int) -> StoredObject:
        return StoredObject(bucket=None, key=key, public_url=self.public_url(key), sha256=digest, size=size)


IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
ALIAS_CACHE_CONTROL = "public, max-age=300"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _service_error_code(exc: BaseException) -> str:
    """The service's error code (`AccessDenied`, `NoSuchKey`...) or the client-side error class.

    Built only from the code and HTTP status, never from the request: no credential can leak through it.
    """
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code") or "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code.isdigit():  # HEAD answers carry no body, hence no code: name the HTTP status instead
            with contextlib.suppress(ValueError):
                code = HTTPStatus(int(code)).phrase.replace(" ", "")
        if code and status:
            return f"{code} (HTTP {status})"
        if code or status:
            return code or f"HTTP {status}"
    return type(exc).__name__


class S3ImageStorage:
    """Images in an S3 bucket (AWS, R2, MinIO, SeaweedFS) through a boto3 client; same keys as local.

    Immutable keys are content-addressed: written once with a conditional put (`If-None-Match: *`) and a
    year-long immutable Cache-Control; the mutable "current" alias gets a short cache lifetime. Every put
    sends Content-MD5 and x-amz-checksum-sha256 so the server refuses corrupted bodies (BadDigest), and the
    answer's ETag/checksum are compared again here.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        public_url_base: str | None = None,
        *,
        conditional_put: bool = True,
    ) -> None:
        if not bucket:
            raise StorageError("an S3 bucket name is required")
        self._client = client
        self._bucket = bucket
        self._public_url_base = public_url_base.rstrip("/") if public_url_base else None
        # SeaweedFS (4.48, checked in tests), AWS S3, R2 and MinIO honour If-None-Match: * on PutObject
        # (412 PreconditionFailed when the key exists). For a store that does not, pass conditional_put=False
        # (or let a 501 NotImplemented answer switch it off): immutable puts then check head_object first,
        # which is racy between two writers but harmless for content-addressed keys (same bytes either way).
        self._conditional_put = conditional_put

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}"

    def put(self, key: str, data: bytes, *, immutable: bool, content_type: str = PNG) -> StoredObject:
        check_key(key)
        digest = sha256_hex(data)
        md5 = _md5(data)
        params: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "ContentLength": len(data),
            "ContentMD5": base64.b64encode(md5).decode("ascii"),
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(digest)).decode("ascii"),
            "CacheControl": IMMUTABLE_CACHE_CONTROL if immutable else ALIAS_CACHE_CONTROL,
        }
        if immutable and not self._conditional_put and self.exists(key):
            return self._stored(key, digest, len(data))
        if immutable and self._conditional_put:
            params["IfNoneMatch"] = "*"
        try:
            response = self._client.put_object(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if immutable and (code == "PreconditionFailed" or status == 412):
                # The content-addressed object is already there: the same bytes, nothing to do.
                return self._stored(key, digest, len(data))
            if immutable and code == "NotImplemented" and self._conditional_put:
                self._conditional_put = False
                return self.put(key, data, immutable=immutable, content_type=content_type)
            raise self._error("cannot write", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("cannot write", key, exc) from exc
        self._verify_put(key, response, md5, params["ChecksumSHA256"])
        return self._stored(key, digest, len(data))

    def get(self, key: str) -> bytes:
        check_key(key)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            data: bytes = response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                raise self._error("no image at", key, exc) from exc
            raise self._error("cannot read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("cannot read", key, exc) from exc
        etag = str(response.get("ETag") or "").strip('"')
        if _is_plain_md5(etag) and _md5(data).hex() != etag.lower():
            raise StorageError(f"corrupted read of {self._url(key)}: body MD5 differs from ETag {etag}")
        return data

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                return False
            raise self._error("cannot check", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("cannot check", key, exc) from exc
        return True

    def public_url(self, key: str) -> str:
        quoted = quote(check_key(key), safe="/")
        if self._public_url_base:
            return f"{self._public_url_base}/{quoted}"
        endpoint = str(self._client.meta.endpoint_url).rstrip("/")
        return f"{endpoint}/{quote(self._bucket, safe='')}/{quoted}"

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", ()))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list {self.location}/{prefix}*: {_service_error_code(exc)}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._client.delete_object(Bucket=self._bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("cannot delete", key, exc) from exc

    def check_ready(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(
                f"cannot use bucket {self.location}: {self._refusal_code(exc)}; check S3_BUCKET_NAME, "
                "S3_ENDPOINT_URL and the S3 credentials"
            ) from None
        try:
            write_probe(self)
        except StorageError as exc:
            raise StorageError(
                f"bucket {self.location} is not writable with these credentials ({exc}): the S3 identity needs "
                f"PutObject on the bucket and DeleteObject on {PROBE_PREFIX}*"
            ) from None

    def _refusal_code(self, exc: BaseException) -> str:
        """A HEAD answer has no body: ask again with a GET-style call to learn which error it was."""
        try:
            self._client.list_objects_v2(Bucket=self._bucket, MaxKeys=1)
        except ClientError as listing:
            return _service_error_code(listing)
        except BotoCoreError:
            pass
        return _service_error_code(exc)

    def _verify_put(self, key: str, response: dict[str, Any], md5: bytes, checksum_sha256: str) -> None:
        etag = str(response.get("ETag") or "").strip('"')
        if _is_plain_md5(etag) and etag.lower() != md5.hex():
            raise StorageError(f"integrity check failed for {self._url(key)}: ETag {etag} != MD5 {md5.hex()}")
        returned = response.get("ChecksumSHA256")
        if returned and returned != checksum_sha256:
            raise StorageError(f"integrity check failed for {self._url(key)}: server SHA-256 differs")

    def _url(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def _error(self, action: str, key: str, exc: BaseException) -> StorageError:
        return StorageError(f"{action} {self._url(key)}: {_service_error_code(exc)}")

    def _stored(self, key: str, digest: str, size: int) -> StoredObject:
        return StoredObject(bucket=self._bucket, key=key, public_url=self.public_url(key), sha256=digest, size=size)


def _is_plain_md5(etag: str) -> bool:
    """A single-part ETag is the hex MD5 of the body; multipart ETags end in `-<parts>`."""
    return len(etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in etag)
