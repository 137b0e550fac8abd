"""Likeness: fetch a reference photo safely, have it described once, keep the description per content hash.

Fetching refuses anything that could reach inside the network (SSRF). Only the description, never the photo,
reaches the image model: that is the seed's copyright argument.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import ipaddress
import socket
import ssl
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote, urljoin, urlsplit

from PIL import Image, UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portrait_pipeline import images
from portrait_pipeline.audit.models import Player, PlayerLikeness
from portrait_pipeline.errors import ConfigurationError, GenerationFailed, PortraitPipelineError, ReferenceImageRejected
from portrait_pipeline.prompts import LIKENESS_PROMPT_VERSION
from portrait_pipeline.storage import sha256_hex

DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The formats the vision model accepts; anything else is refused before Pillow's other plugins see it.
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
CHUNK_SIZE = 64 * 1024
REQUEST_HEADERS = {
    "User-Agent": "portrait-pipeline-likeness/1.0",
    "Accept": "image/jpeg, image/png, image/webp",
    "Connection": "close",
}


@dataclass(frozen=True)
class FetchPolicy:
    """What a reference fetch may reach and how much it may take."""

    allow_hosts: frozenset[str] = frozenset()  # "host:port" entries that may resolve to private/loopback addresses
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3

    @classmethod
    def from_allow_list(cls, value: str | None, **kwargs: Any) -> FetchPolicy:
        """Build a policy from LIKENESS_FETCH_ALLOW_HOSTS ("host:port,host2:port2")."""
        entries = [entry.strip() for entry in (value or "").split(",")]
        return cls(allow_hosts=frozenset(_allow_entry(entry) for entry in entries if entry), **kwargs)


@dataclass(frozen=True)
class Reference:
    """A fetched reference photo, checked to be a decodable image."""

    url: str
    final_url: str
    data: bytes
    sha256: str
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True)
class _Target:
    """A URL that passed every check, with the addresses it was checked against."""

    label: str  # how messages name it: the URL, or "first (redirected to this)"
    scheme: str
    host: str
    port: int
    request_path: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class _Answer:
    location: str | None  # set when the server redirected
    data: bytes


def fetch_reference(url: str, policy: FetchPolicy) -> Reference:
    """Download a reference photo, re-checking every redirect, within the policy's size and time limits."""
    deadline = time.monotonic() + policy.timeout_s
    current = url
    for _ in range(policy.max_redirects + 1):
        label = url if current == url else f"{url} (redirected to {current})"
        target = _check_url(current, label, policy)
        answer = _get(target, policy, deadline)
        if answer.location is None:
            return _reference(url, current, answer.data, label)
        current = urljoin(current, answer.location)
    raise ReferenceImageRejected(f"{url}: more than {policy.max_redirects} redirects")


def address_problem(address: str) -> str | None:
    """Why an address could reach inside the network (private, loopback...), or None when it is public."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        problem = address_problem(str(inner))
        return f"{problem} (it stands for {inner})" if problem else None
    checks = (
        ("the cloud metadata address", ip in METADATA_ADDRESSES),
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("not globally routable", not ip.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64): where the traffic really goes."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def _allow_entry(entry: str) -> str:
    problem = f"LIKENESS_FETCH_ALLOW_HOSTS entry {entry!r} is not host:port"
    try:
        parts = urlsplit(f"//{entry}")
        port = parts.port
    except ValueError:
        raise ConfigurationError(problem) from None
    if not parts.hostname or port is None or not 0 < port < 65536 or "@" in parts.netloc:
        raise ConfigurationError(problem)
    if parts.path or parts.query or parts.fragment or "/" in entry:
        raise ConfigurationError(problem)
    return _host_key(parts.hostname, port)


def _host_key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_url(url: str, label: str, policy: FetchPolicy) -> _Target:
    """Apply the scheme, credentials and address rules; resolve the host once, here."""
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise ReferenceImageRejected(f"{label}: not a valid URL ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ReferenceImageRejected(f"{label}: scheme {parts.scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc:
        raise ReferenceImageRejected(f"{label}: credentials in the URL are not allowed")
    if not parts.hostname:
        raise ReferenceImageRejected(f"{label}: the URL has no host")
    host = _ascii_host(parts.hostname, label)
    port = DEFAULT_PORTS[parts.scheme] if explicit_port is None else explicit_port
    addresses = _resolve(host, port, label)
    if _host_key(host, port) not in policy.allow_hosts:
        for address in addresses:
            if problem := address_problem(address):
                raise ReferenceImageRejected(f"{label}: address {address} is {problem}")
    path = parts.path or "/"
    request_path = f"{path}?{parts.query}" if parts.query else path
    # Percent-encode only what HTTP cannot carry (spaces, non-ASCII); existing escapes stay as they are.
    request_path = quote(request_path, safe="!#$%&'()*+,/:;=?@[]~")
    return _Target(label, parts.scheme, host, port, request_path, addresses)


def _ascii_host(hostname: str, label: str) -> str:
    if hostname.isascii():
        return hostname
    try:
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise ReferenceImageRejected(f"{label}: host {hostname!r} is not a valid name") from None


def _resolve(host: str, port: int, label: str) -> tuple[str, ...]:
    # getaddrinfo has no timeout of its own and cannot be interrupted: a slow resolver can outlast
    # policy.timeout_s. The time it takes still counts, since the deadline is set before the first lookup.
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ReferenceImageRejected(f"{label}: host {host} does not resolve ({exc})") from None
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def _get(target: _Target, policy: FetchPolicy, deadline: float) -> _Answer:
    """One GET against the checked addresses: a redirect location, or the body within the size limit.

    Every socket operation (connect, TLS handshake, sending, each read of the status line, headers and body)
    waits at most for the time left before `deadline`, which the whole fetch, redirects included, shares.
    """
    connection: http.client.HTTPConnection | None = None
    try:
        connection = _connection(target, deadline)
        connection.connect()
        connection.sock.settimeout(_remaining(deadline))  # sendall's timeout covers the whole request
        connection.request("GET", target.request_path, headers=REQUEST_HEADERS)
        response = connection.getresponse()
        if response.status in REDIRECT_STATUSES:
            return _Answer(location=_location(target, response), data=b"")
        if not 200 <= response.status < 300:
            raise ReferenceImageRejected(f"{target.label}: HTTP {response.status} {response.reason}".rstrip())
        return _Answer(location=None, data=_read_body(target, response, policy, deadline))
    except TimeoutError:
        raise ReferenceImageRejected(
            f"{target.label}: no answer within {policy.timeout_s:g} s (the fetch deadline)"
        ) from None
    except (OSError, http.client.HTTPException, UnicodeError) as exc:
        raise ReferenceImageRejected(f"{target.label}: {exc.__class__.__name__}: {exc}") from None
    finally:
        if connection is not None:
            connection.close()


def _remaining(deadline: float) -> float:
    """Seconds left before the deadline, for the next socket operation; TimeoutError once it has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the fetch deadline has passed")
    return remaining


def _connection(target: _Target, deadline: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target.host, target.port, target.addresses, deadline)
    return _PinnedHTTPConnection(target.host, target.port, target.addresses, deadline)


class _DeadlineReader(io.RawIOBase):
    """The socket as HTTPResponse reads it, each read waiting only for the time left before the deadline.

    http.client sets one socket timeout and applies it to every recv, so a server that sends a byte just
    before each timeout would hold the fetch indefinitely; re-arming the timeout before each read makes
    the deadline hold over the status line, the headers and the body alike.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        # The socket's own raw reader: it holds a reference that keeps the socket open while the response
        # reads, after HTTPConnection has handed the connection over (it does so with "Connection: close").
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_remaining(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What HTTPResponse sees of the socket: it only asks for a file to read the answer from."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


def _deadline_response(deadline: float) -> type[http.client.HTTPResponse]:
    """An HTTPResponse class reading through _DeadlineReader (http.client builds responses from a class)."""

    class _DeadlineResponse(http.client.HTTPResponse):
        def __init__(
            self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
        ) -> None:
            super().__init__(_DeadlineSocket(sock, deadline), debuglevel, method, url)  # type: ignore[arg-type]

    return _DeadlineResponse


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the addresses that were checked, never re-resolving the name (no DNS-rebinding window)."""

    def __init__(self, host: str, port: int, addresses: tuple[str, ...], deadline: float) -> None:
        super().__init__(host, port, timeout=_remaining(deadline))
        self.addresses = addresses
        self.deadline = deadline
        self.response_class = _deadline_response(deadline)

    def connect(self) -> None:
        self.sock = _connect_first(self.addresses, self.port, self.deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As _PinnedHTTPConnection, with SNI and certificate checks against the URL's host name."""

    def __init__(self, host: str, port: int, addresses: tuple[str, ...], deadline: float) -> None:
        self.ssl_context = ssl.create_default_context()
        super().__init__(host, port, timeout=_remaining(deadline), context=self.ssl_context)
        self.addresses = addresses
        self.deadline = deadline
        self.response_class = _deadline_response(deadline)

    def connect(self) -> None:
        sock = _connect_first(self.addresses, self.port, self.deadline)
        # The handshake is one operation for the socket timeout: it too ends at the deadline.
        sock.settimeout(_remaining(self.deadline))
        self.sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _connect_first(addresses: tuple[str, ...], port: int, deadline: float) -> socket.socket:
    """The first of the checked addresses that accepts a connection (localhost may be ::1 or 127.0.0.1)."""
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        try:
            return socket.create_connection((address, port), _remaining(deadline))
        except TimeoutError:
            raise  # each attempt waits for all the time left: no time remains for the next address
        except OSError as exc:
            error = exc
    raise error


def _location(target: _Target, response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    if not location:
        raise ReferenceImageRejected(f"{target.label}: redirect (HTTP {response.status}) without a Location")
    return location


def _read_body(target: _Target, response: http.client.HTTPResponse, policy: FetchPolicy, deadline: float) -> bytes:
    """Read in chunks, stopping at the size cap and the deadline whatever the headers claimed."""
    limit = _size(policy.max_bytes)
    if response.length is not None and response.length > policy.max_bytes:
        raise ReferenceImageRejected(f"{target.label}: {_size(response.length)} is over the {limit} limit")
    body = bytearray()
    late = f"{target.label}: the body did not arrive within {policy.timeout_s:g} s (the fetch deadline)"
    try:
        # Each read waits only for the time left (see _DeadlineReader): the body ends by the deadline.
        while chunk := response.read1(CHUNK_SIZE):
            body += chunk
            if len(body) > policy.max_bytes:
                raise ReferenceImageRejected(f"{target.label}: the body is over the {limit} limit")
            if time.monotonic() > deadline:
                raise ReferenceImageRejected(late)
    except TimeoutError:
        raise ReferenceImageRejected(late) from None
    return bytes(body)


def _size(n: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _reference(url: str, final_url: str, data: bytes, label: str) -> Reference:
    image = _decode(data, label)
    mime_type = ACCEPTED_FORMATS.get(image.format or "")
    if mime_type is None:  # a polyglot that another Pillow plugin claimed first
        raise ReferenceImageRejected(f"{label}: the body decodes as {image.format}, not JPEG, PNG or WebP")
    return Reference(
        url=url,
        final_url=final_url,
        data=data,
        sha256=sha256_hex(data),
        mime_type=mime_type,
        width=image.width,
        height=image.height,
    )


def _decode(data: bytes, label: str) -> Image.Image:
    """Identify the format among the accepted ones only, then decode fully behind the bomb guard."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # images.decode makes it an error
            Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS)).close()
    except Image.DecompressionBombError:
        raise ReferenceImageRejected(f"{label}: the image is too large to decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ReferenceImageRejected(f"{label}: the body is not an image (expected JPEG, PNG or WebP)") from None
    try:
        return images.decode(data, "the image")
    except GenerationFailed as exc:
        raise ReferenceImageRejected(f"{label}: {exc}") from None


@dataclass(frozen=True)
class Likeness:
    """A neutral description of a reference photo; only this text, never the photo, reaches the image model."""

    description: str
    reference_url: str
    reference_sha256: str


DescriptionStatus = Literal["described", "reused", "refused"]


@dataclass(frozen=True)
class DescriptionOutcome:
    """What happened to one player's reference: described now, an earlier description reused, or refused."""

    player: str
    url: str
    status: DescriptionStatus
    sha256: str
    detail: str  # the description, or why the reference was refused


class Describer(Protocol):
    """A vision model that turns a photo into words (Gemini's, in production)."""

    @property
    def model(self) -> str: ...

    async def describe(self, image: bytes, mime_type: str) -> str: ...


class LikenessService:
    """Descriptions of players' reference photos: fetched safely, described once per content, stored."""

    def __init__(self, describer: Describer | None, policy: FetchPolicy) -> None:
        self.describer = describer
        self.policy = policy

    async def describe(self, db: Session, player: Player, url: str) -> tuple[Likeness, bool]:
        """Fetch the reference; reuse the stored description of the same bytes, else describe and store.

        Returns the likeness and whether the vision model was called.
        """
        _release(db)
        reference = await asyncio.to_thread(fetch_reference, url, self.policy)
        stored = _stored(db, player.id, reference.sha256)
        if stored is not None:
            return _likeness(stored, url), False
        if self.describer is None:
            raise GenerationFailed("no vision model to describe the reference offline: set GEMINI_API_KEY")
        _release(db)
        description = await self.describer.describe(reference.data, reference.mime_type)
        row = PlayerLikeness(
            player_id=player.id,
            reference_url=url,
            reference_sha256=reference.sha256,
            description=description,
            model=self.describer.model,
            prompt_version=LIKENESS_PROMPT_VERSION,
        )
        try:
            db.add(row)
            db.commit()
        except IntegrityError:  # another run described the same photo meanwhile: keep theirs
            db.rollback()
            row = _stored(db, player.id, reference.sha256) or row
        return _likeness(row, url), True

    async def describe_all(self, db: Session, targets: list[tuple[Player, str]]) -> list[DescriptionOutcome]:
        """Describe each (player, reference URL) in turn; a refused reference is an outcome, not an error."""
        outcomes: list[DescriptionOutcome] = []
        for player, url in targets:
            try:
                likeness, described_now = await self.describe(db, player, url)
            except PortraitPipelineError as exc:
                outcomes.append(DescriptionOutcome(player.display_name, url, "refused", "", str(exc)))
                continue
            status: DescriptionStatus = "described" if described_now else "reused"
            outcomes.append(
                DescriptionOutcome(player.display_name, url, status, likeness.reference_sha256, likeness.description)
            )
        return outcomes

    async def for_generation(self, db: Session, player: Player, url: str) -> Likeness:
        """The newest description of this URL (from `likeness_descriptions`), or one made now."""
        stored = db.scalar(
            select(PlayerLikeness)
            .where(PlayerLikeness.player_id == player.id, PlayerLikeness.reference_url == url)
            .order_by(PlayerLikeness.created_at.desc(), PlayerLikeness.id.desc())
            .limit(1)
        )
        if stored is not None:
            return _likeness(stored, url)
        likeness, _ = await self.describe(db, player, url)
        return likeness


def _release(db: Session) -> None:
    """End the session's transaction before a fetch or a model call: its pooled connection is not held while
    many players wait at once (a batch has more calls in flight than the pool has connections)."""
    db.commit()


def _stored(db: Session, player_id: int, sha256: str) -> PlayerLikeness | None:
    return db.scalar(
        select(PlayerLikeness).where(PlayerLikeness.player_id == player_id, PlayerLikeness.reference_sha256 == sha256)
    )


def _likeness(row: PlayerLikeness, url: str) -> Likeness:
    return Likeness(description=row.description, reference_url=url, reference_sha256=row.reference_sha256)
