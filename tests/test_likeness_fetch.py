"""The reference-photo fetcher against a local HTTP server: SSRF refusals, size and time caps, redirects."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from portrait_pipeline.errors import ConfigurationError, ReferenceImageRejected
from portrait_pipeline.likeness import FetchPolicy, address_problem, fetch_reference


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "white" if mode == "1" else (200, 80, 40)).save(buffer, format=fmt)
    return buffer.getvalue()


@functools.cache
def served_images() -> dict[str, bytes]:
    return {
        "/png": image_bytes("PNG", (80, 100)),
        "/jpeg": image_bytes("JPEG", (96, 64)),
        "/webp": image_bytes("WEBP", (70, 70)),
        "/tiny": image_bytes("PNG", (10, 10)),
        "/bomb": image_bytes("PNG", (8000, 8000), mode="1"),  # 64 Mpx in 8 KB: over Pillow's 50 Mpx guard
        "/big-bomb": image_bytes("PNG", (12000, 12000), mode="1"),  # over twice the guard: refused at open
    }


class ReferenceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReferenceHandler)
        self.hosts_seen: list[str] = []


class ReferenceHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        assert isinstance(self.server, ReferenceServer)
        self.server.hosts_seen.append(self.headers.get("Host", ""))
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path in served_images():
            self.send_body(200, served_images()[url.path], "application/octet-stream")
        elif url.path == "/text":
            self.send_body(200, b"hello, I am not a picture\n", "text/plain")
        elif url.path == "/redirect":
            self.redirect(int(query.get("status", "302")), query["to"])
        elif url.path.startswith("/hops/"):
            hops = int(url.path.removeprefix("/hops/"))
            self.redirect(302, f"/hops/{hops - 1}" if hops > 1 else "/png")
        elif url.path == "/loop":
            self.redirect(302, "/loop")
        elif url.path == "/no-location":
            self.send_body(302, b"", "text/plain")
        elif url.path.startswith("/status/"):
            self.send_body(int(url.path.removeprefix("/status/")), b"nope", "text/plain")
        elif url.path == "/huge-length":
            self.send_head(200, {"Content-Length": "10000000"})
            self.stream(b"\0" * 65536 for _ in range(153))
        elif url.path == "/huge-chunked":
            self.send_head(200, {"Transfer-Encoding": "chunked"})
            self.stream(b"4000\r\n" + b"\0" * 0x4000 + b"\r\n" for _ in range(128))
        elif url.path == "/huge-unframed":
            self.send_head(200, {"Connection": "close"})
            self.stream(b"\0" * 16384 for _ in range(128))
        elif url.path == "/slow-drip":
            self.send_head(200, {"Content-Length": "20000"})
            self.stream(self.drip(b"\0" * 100, every_s=0.05, times=200))
        elif url.path == "/silent":
            time.sleep(1.5)
            self.close_connection = True
        else:
            self.send_body(404, b"no such route", "text/plain")

    def send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_head(status, {"Content-Type": content_type, "Content-Length": str(len(body))})
        self.wfile.write(body)

    def redirect(self, status: int, location: str) -> None:
        self.send_head(status, {"Location": location, "Content-Length": "0"})

    def stream(self, chunks: Iterable[bytes]) -> None:
        self.close_connection = True
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
        except OSError:
            pass  # the client hung up at its cap, as it should

    @staticmethod
    def drip(chunk: bytes, every_s: float, times: int) -> Iterator[bytes]:
        for _ in range(times):
            yield chunk
            time.sleep(every_s)


def is_address_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)  # legacy forms such as 2130706433 or 0x7f.1, parsed without DNS
        return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the fetcher connects to; a non-loopback connect or a real DNS lookup fails the test."""
    seen: list[str] = []
    real_connect = socket.create_connection
    real_resolve = socket.getaddrinfo

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        assert ipaddress.ip_address(address[0]).is_loopback, f"tried to connect to {address[0]}"
        seen.append(address[0])
        return real_connect(address, *args, **kwargs)

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        assert host == "localhost" or is_address_literal(host), f"tried to resolve {host} through DNS"
        return real_resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return seen


@contextlib.contextmanager
def running(httpd: ReferenceServer) -> Iterator[ReferenceServer]:
    served_images()  # built up front so that no request waits for Pillow
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[ReferenceServer]:
    with running(ReferenceServer()) as httpd:
        yield httpd


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReferenceServer, Path]]:
    """The same routes over TLS, with a self-signed certificate for images.test only."""
    cert_file = self_signed_certificate("images.test", tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file)
    httpd = ReferenceServer()
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    with running(httpd):
        yield httpd, cert_file


def self_signed_certificate(host: str, directory: Path) -> Path:
    """A PEM file holding key and certificate, the certificate being its own CA."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    path = directory / "images.test.pem"
    path.write_bytes(pem)
    return path


def resolve_names_to_loopback(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """A stand-in resolver: the given names are 127.0.0.1, address literals pass through."""
    real_resolve = socket.getaddrinfo

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.fixture
def port(server: ReferenceServer) -> int:
    return server.server_port


@pytest.fixture
def base(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def policy(port: int) -> FetchPolicy:
    return FetchPolicy(allow_hosts=frozenset({f"127.0.0.1:{port}"}), max_bytes=50_000, timeout_s=0.5)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/photo.jpg", "scheme 'ftp' is not http or https"),
        ("file:///etc/passwd", "scheme 'file' is not http or https"),
        ("//127.0.0.1:{port}/png", "scheme '(none)' is not http or https"),
        ("http:///png", "the URL has no host"),
        ("http://[::1/png", "not a valid URL"),
        ("http://127.0.0.1:99999/png", "not a valid URL"),
        ("http://169.254.169.254/latest/meta-data", "address 169.254.169.254 is the cloud metadata address"),
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("http://192.168.1.1/", "address 192.168.1.1 is private"),
        ("http://100.64.0.1/", "address 100.64.0.1 is not globally routable"),
        ("http://224.0.0.1/", "address 224.0.0.1 is multicast"),
        ("http://[::1]/", "address ::1 is loopback"),
        ("http://[fe80::1]/", "address fe80::1 is link-local"),
        ("http://[fd00::1]/", "address fd00::1 is private"),
        ("http://[::ffff:10.0.0.1]/", "is private (it stands for 10.0.0.1)"),
        ("http://[::ffff:169.254.169.254]/", "is the cloud metadata address (it stands for 169.254.169.254)"),
        ("http://0.0.0.0:{port}/png", "address 0.0.0.0 is unspecified"),
        ("http://127.0.0.1:{port}/png", "address 127.0.0.1 is loopback"),
        ("http://localhost:{port}/png", "is loopback"),
        ("http://2130706433:{port}/png", "address 127.0.0.1 is loopback"),
        ("http://0x7f.1:{port}/png", "address 127.0.0.1 is loopback"),
        ("http://user:secret@127.0.0.1:{port}/png", "credentials in the URL are not allowed"),
        ("http://user@example.com/photo.jpg", "credentials in the URL are not allowed"),
        ("http://@127.0.0.1:{port}/png", "credentials in the URL are not allowed"),
    ],
)
def test_fetch_refuses_internal_and_malformed_urls_before_connecting(
    url: str, reason: str, port: int, connections: list[str]
) -> None:
    url = url.format(port=port)
    with pytest.raises(ReferenceImageRejected) as refused:
        fetch_reference(url, FetchPolicy(timeout_s=0.5))
    assert str(refused.value).startswith(f"{url}: ")
    assert reason in str(refused.value)
    assert connections == []


def test_allow_list_names_host_and_port_not_the_address(port: int, policy: FetchPolicy) -> None:
    with pytest.raises(ReferenceImageRejected, match="is loopback"):
        fetch_reference(f"http://localhost:{port}/png", policy)
    with pytest.raises(ReferenceImageRejected, match=re.escape("address 127.0.0.1 is loopback")):
        fetch_reference(f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/png", policy)


def test_userinfo_is_refused_even_for_an_allow_listed_host(port: int, policy: FetchPolicy) -> None:
    with pytest.raises(ReferenceImageRejected, match="credentials in the URL"):
        fetch_reference(f"http://u:p@127.0.0.1:{port}/png", policy)


@pytest.mark.parametrize(
    ("path", "mime_type", "size"),
    [("/png", "image/png", (80, 100)), ("/jpeg", "image/jpeg", (96, 64)), ("/webp", "image/webp", (70, 70))],
)
def test_fetch_returns_allow_listed_image_with_hash_type_and_size(
    base: str, policy: FetchPolicy, path: str, mime_type: str, size: tuple[int, int]
) -> None:
    reference = fetch_reference(base + path, policy)
    assert reference.url == reference.final_url == base + path
    assert reference.data == served_images()[path]
    assert reference.sha256 == hashlib.sha256(served_images()[path]).hexdigest()
    assert reference.mime_type == mime_type
    assert (reference.width, reference.height) == size


def test_allow_listed_localhost_tries_each_resolved_address(port: int) -> None:
    policy = FetchPolicy(allow_hosts=FetchPolicy.from_allow_list(f"localhost:{port}").allow_hosts, timeout_s=0.5)
    assert fetch_reference(f"http://localhost:{port}/png", policy).data == served_images()["/png"]


def test_fetch_connects_to_the_checked_address_and_sends_the_url_host(
    monkeypatch: pytest.MonkeyPatch, server: ReferenceServer, port: int, connections: list[str]
) -> None:
    real_resolve = socket.getaddrinfo
    answers = iter(["127.0.0.1", "10.0.0.1"])  # a rebinding resolver: harmless first, internal afterwards

    def rebinding_resolve(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host == "127.0.0.1":  # socket.create_connection parsing the pinned address
            return real_resolve(host, port, *args, **kwargs)
        assert host == "images.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolve)
    policy = FetchPolicy(allow_hosts=frozenset({f"images.test:{port}"}), timeout_s=0.5)
    reference = fetch_reference(f"http://images.test:{port}/png", policy)
    assert reference.data == served_images()["/png"]
    assert connections == ["127.0.0.1"]
    assert server.hosts_seen[-1] == f"images.test:{port}"


@pytest.fixture
def trust_test_certificate(monkeypatch: pytest.MonkeyPatch, tls_server: tuple[ReferenceServer, Path]) -> None:
    real_default_context = ssl.create_default_context
    cafile = str(tls_server[1])
    monkeypatch.setattr(ssl, "create_default_context", lambda: real_default_context(cafile=cafile))


@pytest.mark.usefixtures("trust_test_certificate")
def test_https_fetch_verifies_the_certificate_against_the_url_host_not_the_address(
    monkeypatch: pytest.MonkeyPatch, tls_server: tuple[ReferenceServer, Path], connections: list[str]
) -> None:
    httpd = tls_server[0]
    port = httpd.server_port
    resolve_names_to_loopback(monkeypatch, "images.test", "other.test")
    policy = FetchPolicy.from_allow_list(f"images.test:{port},other.test:{port}", timeout_s=0.5)
    reference = fetch_reference(f"https://images.test:{port}/jpeg", policy)
    assert reference.data == served_images()["/jpeg"]
    assert httpd.hosts_seen[-1] == f"images.test:{port}"
    with pytest.raises(ReferenceImageRejected, match="SSLCertVerificationError"):
        fetch_reference(f"https://other.test:{port}/jpeg", policy)
    assert connections == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/huge-length", "9.5 MB is over the 48.8 KB limit"),
        ("/huge-chunked", "the body is over the 48.8 KB limit"),
        ("/huge-unframed", "the body is over the 48.8 KB limit"),
    ],
)
def test_fetch_stops_at_the_size_cap_whatever_the_framing(
    base: str, policy: FetchPolicy, path: str, reason: str
) -> None:
    with pytest.raises(ReferenceImageRejected) as refused:
        fetch_reference(base + path, policy)
    assert str(refused.value) == f"{base}{path}: {reason}"


@pytest.mark.parametrize(
    ("path", "reason"), [("/slow-drip", "did not arrive within 0.5 s"), ("/silent", "no answer within 0.5 s")]
)
def test_fetch_gives_up_at_the_deadline(base: str, policy: FetchPolicy, path: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(ReferenceImageRejected, match=reason):
        fetch_reference(base + path, policy)
    assert time.monotonic() - started < 1.2


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_fetch_follows_redirect_to_an_allowed_url(base: str, policy: FetchPolicy, status: int) -> None:
    url = f"{base}/redirect?status={status}&to=/png"
    reference = fetch_reference(url, policy)
    assert (reference.url, reference.final_url) == (url, f"{base}/png")
    assert reference.data == served_images()["/png"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://127.0.0.1:1/png", "address 127.0.0.1 is loopback"),
        ("http://localhost:{port}/png", "is loopback"),
        ("http://169.254.169.254/latest/meta-data", "address 169.254.169.254 is the cloud metadata address"),
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("file:///etc/passwd", "scheme 'file' is not http or https"),
        ("http://user:pw@127.0.0.1:{port}/png", "credentials in the URL are not allowed"),
    ],
)
def test_fetch_rechecks_every_redirect_location(
    base: str, port: int, policy: FetchPolicy, connections: list[str], location: str, reason: str
) -> None:
    location = location.format(port=port)
    url = f"{base}/redirect?to={location}"
    with pytest.raises(ReferenceImageRejected) as refused:
        fetch_reference(url, policy)
    assert str(refused.value).startswith(f"{url} (redirected to {location}): ")
    assert reason in str(refused.value)
    assert connections == ["127.0.0.1"]  # only the allow-listed first hop


def test_fetch_follows_up_to_max_redirects(base: str, policy: FetchPolicy) -> None:
    assert fetch_reference(f"{base}/hops/3", policy).final_url == f"{base}/png"


@pytest.mark.parametrize("path", ["/hops/4", "/loop"])
def test_fetch_refuses_too_many_redirects(base: str, policy: FetchPolicy, path: str) -> None:
    with pytest.raises(ReferenceImageRejected) as refused:
        fetch_reference(base + path, policy)
    assert str(refused.value) == f"{base}{path}: more than 3 redirects"


def test_fetch_refuses_redirect_without_location(base: str, policy: FetchPolicy) -> None:
    with pytest.raises(ReferenceImageRejected, match="redirect \\(HTTP 302\\) without a Location"):
        fetch_reference(f"{base}/no-location", policy)


@pytest.mark.parametrize("status", [404, 500])
def test_fetch_refuses_error_status(base: str, policy: FetchPolicy, status: int) -> None:
    with pytest.raises(ReferenceImageRejected, match=f": HTTP {status} "):
        fetch_reference(f"{base}/status/{status}", policy)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/text", "the body is not an image (expected JPEG, PNG or WebP)"),
        ("/tiny", "implausible dimensions 10x10"),
        ("/bomb", "too large to decode safely"),
        ("/big-bomb", "too large to decode safely"),
    ],
)
def test_fetch_refuses_content_that_is_not_a_usable_image(
    base: str, policy: FetchPolicy, path: str, reason: str
) -> None:
    with pytest.raises(ReferenceImageRejected, match=re.escape(reason)):
        fetch_reference(base + path, policy)


def test_fetch_reports_a_refused_connection_as_rejection() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    free_port = listener.getsockname()[1]
    listener.close()
    policy = FetchPolicy(allow_hosts=frozenset({f"127.0.0.1:{free_port}"}), timeout_s=0.5)
    with pytest.raises(ReferenceImageRejected, match="ConnectionRefusedError"):
        fetch_reference(f"http://127.0.0.1:{free_port}/png", policy)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("2002:5db8:d70e::", None),  # 6to4 of a public address
        ("240.0.0.1", "reserved"),
        ("::", "unspecified"),
        ("fec0::1", "site-local"),
        ("fd00:ec2::254", "the cloud metadata address"),
        ("2002:a00:1::", "private (it stands for 10.0.0.1)"),
        ("64:ff9b::7f00:1", "loopback (it stands for 127.0.0.1)"),
    ],
)
def test_address_problem_names_why_an_address_is_internal(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


@pytest.mark.parametrize(
    ("value", "hosts"),
    [
        (None, set()),
        ("", set()),
        (" 127.0.0.1:8080 , images.local:9000,", {"127.0.0.1:8080", "images.local:9000"}),
        ("Images.Local:9000", {"images.local:9000"}),
        ("[::1]:8080", {"[::1]:8080"}),
    ],
)
def test_from_allow_list_parses_host_port_entries(value: str | None, hosts: set[str]) -> None:
    assert FetchPolicy.from_allow_list(value).allow_hosts == hosts


@pytest.mark.parametrize(
    "value",
    [
        "localhost",
        "localhost:",
        "localhost:http",
        "localhost:0",
        "localhost:70000",
        ":8080",
        "http://localhost:8080",
        "user@localhost:8080",
        "localhost:8080/images",
        "[::1:8080",
        "good:80,bad",
    ],
)
def test_from_allow_list_refuses_entries_that_are_not_host_port(value: str) -> None:
    with pytest.raises(ConfigurationError, match="LIKENESS_FETCH_ALLOW_HOSTS entry"):
        FetchPolicy.from_allow_list(value)


def test_from_allow_list_passes_other_limits_through() -> None:
    policy = FetchPolicy.from_allow_list("h:1", max_bytes=5, timeout_s=2.0, max_redirects=0)
    assert (policy.max_bytes, policy.timeout_s, policy.max_redirects) == (5, 2.0, 0)
