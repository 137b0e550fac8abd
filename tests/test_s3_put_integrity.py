"""The integrity check after an S3 put, against the real SeaweedFS behind a proxy that alters its answers.

SeaweedFS never returns a wrong ETag or checksum, so without a fault in between the check's failure branch
never runs. The proxy forwards every request byte for byte (the signature covers the Host header, which it keeps)
and rewrites one header of the PUT answer: the client must refuse to call that object stored.
"""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from portrait_pipeline.errors import StorageError
from portrait_pipeline.storage import sha256_hex
from tests.servers.s3_fixtures import SeaweedEnv, seaweed  # noqa: F401

WRONG_MD5 = '"' + "0" * 32 + '"'
WRONG_SHA256 = base64.b64encode(bytes(32)).decode()


class TamperingProxy:
    """A loopback HTTP proxy in front of one upstream that replaces a header of PUT answers (`tamper`)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.tamper: dict[str, str] = {}
        self.tampered = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    connection.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    answer = connection.getresponse()
                    payload = answer.read()
                    headers = dict(answer.getheaders())
                finally:
                    connection.close()
                if self.command == "PUT" and answer.status == 200:
                    for name, value in proxy.tamper.items():
                        headers = {key: val for key, val in headers.items() if key.lower() != name.lower()}
                        headers[name] = value
                        proxy.tampered += 1
                self.send_response(answer.status, answer.reason)
                for name, value in headers.items():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> TamperingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def proxy(seaweed: SeaweedEnv) -> Iterator[TamperingProxy]:  # noqa: F811
    with TamperingProxy(seaweed.endpoint_url) as running:
        yield running


def test_a_put_through_the_proxy_unaltered_is_stored(seaweed: SeaweedEnv, proxy: TamperingProxy) -> None:  # noqa: F811
    storage = seaweed.storage(endpoint_url=proxy.endpoint_url)
    stored = storage.put("integrity/clean.png", b"clean bytes", immutable=False)
    assert stored.sha256 == sha256_hex(b"clean bytes") and proxy.tampered == 0
    assert (
        seaweed.client().get_object(Bucket=seaweed.bucket, Key="integrity/clean.png")["Body"].read() == b"clean bytes"
    )


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        ("ETag", WRONG_MD5, "ETag 00000000000000000000000000000000 != MD5"),
        ("x-amz-checksum-sha256", WRONG_SHA256, "server SHA-256 differs"),
    ],
)
def test_a_put_whose_answer_does_not_match_the_bytes_sent_is_refused(
    seaweed: SeaweedEnv,  # noqa: F811
    proxy: TamperingProxy,
    header: str,
    value: str,
    message: str,
) -> None:
    storage = seaweed.storage(endpoint_url=proxy.endpoint_url)
    proxy.tamper = {header: value}
    key = f"integrity/{header.lower()}.png"
    with pytest.raises(StorageError, match=rf"^integrity check failed for s3://portraits/{key}: {message}"):
        storage.put(key, b"portrait bytes", immutable=False)
    assert proxy.tampered == 1
