"""One deadline over the whole reference fetch, against a real local server that answers slowly on purpose.

http.client's socket timeout bounds each recv, not the exchange: a server that sends a byte just before every
timeout can keep a fetch going for minutes. These tests drive such servers (one header line, one status byte,
one body byte at a time) and check that the fetch stops at FetchPolicy.timeout_s, with a reason naming it.
"""

from __future__ import annotations

import functools
import io
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from portrait_pipeline.errors import ReferenceImageRejected
from portrait_pipeline.likeness import FetchPolicy, fetch_reference

TIMEOUT_S = 1.0
# The fetch must end at the deadline, give or take scheduling on a busy machine.
LATEST_S = 1.5
# Every slow route ends by itself after this long, so a fetcher without a deadline still finishes the test.
GIVE_UP_S = 6.0

Step = tuple[float, bytes]  # wait this many seconds, then send these bytes


@functools.cache
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 100), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def complete_answer(body: bytes) -> bytes:
    return b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def dribbled_headers(every_s: float) -> Iterator[Step]:
    """A valid image whose headers come one line every `every_s` seconds, until GIVE_UP_S has passed."""
    yield 0.0, b"HTTP/1.1 200 OK\r\n"
    for line in range(int(GIVE_UP_S / every_s)):
        yield every_s, b"X-Drip-%d: still here\r\n" % line
    yield 0.0, complete_answer(png())


def dribbled_status_line(every_s: float) -> Iterator[Step]:
    """The status line one byte at a time: the fetch has not even seen a status code at the deadline."""
    status = b"HTTP/1.1 200 OK\r\n"
    for byte in status:
        yield every_s, bytes([byte])
    yield 0.0, complete_answer(png())


def dribbled_body(every_s: float) -> Iterator[Step]:
    """Prompt headers, then the body one byte every `every_s` seconds: each read returns before its timeout."""
    body = png()
    yield 0.0, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body)
    for index in range(min(len(body), int(GIVE_UP_S / every_s))):
        yield every_s, body[index : index + 1]
    yield 0.0, body[int(GIVE_UP_S / every_s) :]


def slow_redirect(every_s: float) -> Iterator[Step]:
    """A redirect whose headers take most of the budget, to a server that dribbles its headers."""
    yield 0.0, b"HTTP/1.1 302 Found\r\n"
    for line in range(2):
        yield every_s, b"X-Drip-%d: still here\r\n" % line
    yield 0.0, b"Location: /dribbled-headers\r\nContent-Length: 0\r\n\r\n"


ROUTES: dict[str, Callable[[], Iterator[Step]]] = {
    "/dribbled-headers": functools.partial(dribbled_headers, 0.3),
    "/dribbled-status-line": functools.partial(dribbled_status_line, 0.3),
    # Just under the socket timeout: every read succeeds, the exchange as a whole does not.
    "/dribbled-body": functools.partial(dribbled_body, 0.9),
    "/slow-redirect": functools.partial(slow_redirect, 0.3),
    "/prompt": lambda: iter([(0.0, b"HTTP/1.1 200 OK\r\n" + complete_answer(png()))]),
}


class SlowServer(socketserver.ThreadingTCPServer):
    """Speaks just enough HTTP/1.1 to answer a GET, at the pace its route dictates."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.stopping = threading.Event()

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class SlowHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, SlowServer)
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        path = head.split(b" ", 2)[1].decode("ascii")
        route = ROUTES.get(path, lambda: iter([(0.0, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")]))
        try:
            for wait_s, data in route():
                if wait_s and self.server.stopping.wait(wait_s):
                    return
                self.request.sendall(data)
        except OSError:
            pass  # the fetcher hung up at its deadline, as it should


@pytest.fixture(scope="module")
def slow_server() -> Iterator[SlowServer]:
    png()  # built up front so that no answer waits for Pillow
    server = SlowServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def policy(slow_server: SlowServer) -> FetchPolicy:
    port = slow_server.server_address[1]
    return FetchPolicy(allow_hosts=frozenset({f"127.0.0.1:{port}"}), timeout_s=TIMEOUT_S)


def test_a_prompt_server_is_fetched(slow_server: SlowServer, policy: FetchPolicy) -> None:
    """The control: the deadline machinery does not get in the way of an ordinary answer."""
    assert fetch_reference(f"{slow_server.base}/prompt", policy).data == png()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/dribbled-headers", "no answer within 1 s (the fetch deadline)"),
        ("/dribbled-status-line", "no answer within 1 s (the fetch deadline)"),
        ("/slow-redirect", "no answer within 1 s (the fetch deadline)"),
        ("/dribbled-body", "the body did not arrive within 1 s (the fetch deadline)"),
    ],
)
def test_a_server_that_answers_a_little_at_a_time_is_cut_off_at_the_deadline(
    slow_server: SlowServer, policy: FetchPolicy, path: str, reason: str
) -> None:
    url = f"{slow_server.base}{path}"
    started = time.monotonic()
    with pytest.raises(ReferenceImageRejected) as refused:
        fetch_reference(url, policy)
    elapsed = time.monotonic() - started
    assert str(refused.value).startswith(f"{url}")
    assert reason in str(refused.value)
    assert TIMEOUT_S * 0.9 <= elapsed < LATEST_S, f"gave up after {elapsed:.2f} s; the deadline was {TIMEOUT_S} s"
