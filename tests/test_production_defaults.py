"""What production runs with, pinned: the reference size cap, the system prompt per version, the field
sanitizer's coverage and which Gemini errors are retried.

Each test here stands for a change no other test noticed: a default that drifted, a prompt edited without
a new version (runs would be audited under a version whose text they did not use), a sanitizer narrowed
to a blacklist, a retry rule that pays for the same wrong request five times.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from portrait_pipeline import prompts
from portrait_pipeline.defs.resources import GeminiResource, LikenessResource
from portrait_pipeline.errors import GenerationFailed, ReferenceImageRejected
from portrait_pipeline.generation.renderer import RenderRequest
from portrait_pipeline.likeness import FetchPolicy, fetch_reference
from portrait_pipeline.styles import STYLES
from tests.helpers import current_catalogue
from tests.servers import gemini as fake

TEN_MB = 10 * 1024 * 1024

# --- the reference size cap ----------------------------------------------------------------------------


def test_the_reference_size_cap_defaults_to_10_mb() -> None:
    assert FetchPolicy().max_bytes == TEN_MB
    assert LikenessResource().max_bytes == TEN_MB
    assert LikenessResource().policy().max_bytes == TEN_MB


class SizedBodyServer(ThreadingHTTPServer):
    """Serves `/<n>/<framing>`: n zero bytes, announced with Content-Length or sent until the connection closes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SizedBodyHandler)


class SizedBodyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        _, size, framing = self.path.split("/")
        remaining = int(size)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if framing == "length":
            self.send_header("Content-Length", size)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        block = b"\0" * 65536
        try:
            while remaining:
                sent = min(remaining, len(block))
                self.wfile.write(block[:sent])
                remaining -= sent
        except OSError:
            pass  # the fetcher hung up at its cap, as it should


@pytest.fixture(scope="module")
def sized_server() -> Iterator[SizedBodyServer]:
    server = SizedBodyServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def production_policy(sized_server: SizedBodyServer) -> FetchPolicy:
    """The policy as resources.py builds it for a run: only the allow-list set, every limit at its default."""
    return LikenessResource(allow_hosts=f"127.0.0.1:{sized_server.server_address[1]}").policy()


@pytest.mark.parametrize("framing", ["length", "unframed"])
def test_production_policy_refuses_a_reference_one_byte_over_10_mb(
    sized_server: SizedBodyServer, production_policy: FetchPolicy, framing: str
) -> None:
    url = f"http://127.0.0.1:{sized_server.server_address[1]}/{TEN_MB + 1}/{framing}"
    with pytest.raises(ReferenceImageRejected, match="over the 10 MB limit"):
        fetch_reference(url, production_policy)


@pytest.mark.parametrize("framing", ["length", "unframed"])
def test_production_policy_reads_a_reference_of_exactly_10_mb(
    sized_server: SizedBodyServer, production_policy: FetchPolicy, framing: str
) -> None:
    """10 MB is within the cap: the body is read whole, and refused only because zeros are no image."""
    url = f"http://127.0.0.1:{sized_server.server_address[1]}/{TEN_MB}/{framing}"
    with pytest.raises(ReferenceImageRejected, match=r"the body is not an image"):
        fetch_reference(url, production_policy)


# --- the system prompt is pinned to its version ---------------------------------------------------------

# SYSTEM_PROMPT_VERSION -> SHA-256 of every style's full system prompt (see system_prompt_digest).
# Changed the prompt on purpose? Bump SYSTEM_PROMPT_VERSION in portrait_pipeline/prompts.py and add a row.
SYSTEM_PROMPT_DIGESTS = {
    "v2.1": "46998a280859bc944bb40339fee5bce66039617736d600aa32d8fc2b14a29fb9",
    "v3.0": "9a88329ba2b955c5c8f2417dcaa708fe83ba86542f39667f9d4ab0a8f7968928",  # player data block
}


def system_prompt_digest() -> str:
    """One digest over the system prompt of every style, as Gemini receives it."""
    texts = {style: prompts.system_prompt(style) for style in STYLES}
    return hashlib.sha256(json.dumps(texts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def test_the_system_prompt_text_matches_its_version() -> None:
    version, digest = prompts.SYSTEM_PROMPT_VERSION, system_prompt_digest()
    assert version in SYSTEM_PROMPT_DIGESTS, (
        f"SYSTEM_PROMPT_VERSION {version!r} has no pinned digest: add {version!r}: {digest!r} to "
        f"SYSTEM_PROMPT_DIGESTS in tests/test_production_defaults.py"
    )
    assert digest == SYSTEM_PROMPT_DIGESTS[version], (
        f"the system prompt text changed but SYSTEM_PROMPT_VERSION is still {version!r}: every run would be "
        f"audited under a version whose text it did not use. Bump SYSTEM_PROMPT_VERSION in "
        f"portrait_pipeline/prompts.py and add the new version with {digest!r} to SYSTEM_PROMPT_DIGESTS "
        f"in tests/test_production_defaults.py"
    )


def test_each_pinned_version_has_its_own_text() -> None:
    """A new version reusing an old digest means the table was filled in without a real change."""
    digests = list(SYSTEM_PROMPT_DIGESTS.values())
    assert len(set(digests)) == len(digests)


# --- the field sanitizer drops every invisible format character ----------------------------------------

FORMAT_CHARACTERS = [chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"]


def test_there_are_format_characters_to_check() -> None:
    assert len(FORMAT_CHARACTERS) > 150  # Unicode 15 has 170; fewer means the scan above is broken
    assert {"\u200b", "\u202e", "\u2066", "\ufeff", "\U000e0001"} <= set(FORMAT_CHARACTERS)


@pytest.mark.parametrize("field", ["name", "position", "school", "likeness"])
def test_sanitize_field_drops_every_format_character(field: str) -> None:
    kept = [char for char in FORMAT_CHARACTERS if char in prompts.sanitize_field(f"a{char}b", field)]
    assert kept == [], f"sanitize_field({field!r}) keeps {[f'U+{ord(char):04X}' for char in kept]}"


def test_sanitize_field_drops_format_characters_all_at_once() -> None:
    assert prompts.sanitize_field("Luka" + "".join(FORMAT_CHARACTERS) + "Dončić", "likeness") == "LukaDončić"


# --- a non-429 4xx from Gemini is not retried -----------------------------------------------------------

API_KEY = "AIzaTEST-defaults-key-0123456789abcdef"


@pytest.fixture
def gemini_server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(api_key=API_KEY, models=current_catalogue()) as running:
        yield running


def render_once(server: fake.GeminiTestServer) -> None:
    """One portrait through the real SDK and GeminiResource's retry policy, at its production attempt count."""
    gemini = GeminiResource(
        api_key=API_KEY,
        base_url=server.base_url,
        timeout_s=5.0,
        retry_initial_s=0.01,
        retry_max_s=0.05,
        requests_per_minute=60_000,
    )
    assert gemini.max_attempts > 1  # retries are on: a single request below is a choice, not the only option
    request = RenderRequest(
        player_id=1,
        seed="defaults",
        style="default",
        system_prompt=prompts.system_prompt("default"),
        user_prompt=prompts.user_prompt("Cooper Flagg", "F", "Duke", None),
        size="1K",
    )
    asyncio.run(gemini.renderer().render(request))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (400, "Invalid image size."),
        (401, "Request is missing required authentication credential."),
        (403, "Permission denied for this API key."),
        (404, "models/nope is not found for API version v1beta."),
    ],
)
def test_a_4xx_other_than_429_is_sent_once(gemini_server: fake.GeminiTestServer, code: int, message: str) -> None:
    gemini_server.enqueue(fake.error_reply(code, message), fake.image_reply())
    with pytest.raises(GenerationFailed, match=f"Gemini answered {code} .*after 1 attempt"):
        render_once(gemini_server)
    assert len(gemini_server.requests) == 1


def test_a_429_is_retried(gemini_server: fake.GeminiTestServer) -> None:
    """The control for the test above: the same harness does see a retry when one is due."""
    gemini_server.enqueue(fake.rate_limited_reply(0.05), fake.image_reply())
    render_once(gemini_server)
    assert [request.status for request in gemini_server.requests] == [429, 200]
