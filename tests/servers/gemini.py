"""A local HTTP server that speaks Gemini's REST ``generateContent``, for tests and benchmarks.

Point the real SDK at it instead of mocking it::

    with GeminiTestServer() as server:
        client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=server.base_url))
        client.models.generate_content(model="gemini-2.5-flash-image", contents="...")

Scripted replies (``server.enqueue(rate_limited_reply(), image_reply())``) are used first-in first-out.
Without one the server answers by default: an image for models whose name contains "image", text for
the others, after ``latency_s``, limited to ``requests_per_second`` per model (429 with RetryInfo above it) and
failing a seeded ``failure_rate`` share of requests with 500. Scripted replies skip the rate limit and
the random failures; ``latency_s`` delays every ``generateContent`` answer except the rate limiter's 429s (other
endpoints answer at once; a scripted reply's ``delay_s`` delays any).

With ``models=[...]`` the server is also the model catalogue: ``GET /{version}/models[/{id}]`` answers
with Gemini's Model JSON and every other model id gets the real API's 404 NOT_FOUND, on every endpoint.
``remove_model`` / ``add_model`` change the catalogue while running (a model retired mid-run). Without a
catalogue (``models=None``, the default) any model id is accepted.

The Batch API (``client.batches.create/get/list/cancel``) and the Files API's resumable upload and download
are served too: a job is PENDING for ``batch_pending_s``, RUNNING for ``batch_running_s``, then SUCCEEDED
with the default answers (``script_batch(key, reply)`` scripts one request's answer), unless cancelled or
forced into another state (``force_batch_state``).

Structured requests (``generationConfig.responseMimeType`` "application/json" with a ``responseSchema``: the
quality judge's) are recorded as kind "judge", scripted with ``enqueue(..., kind="judge")``, and answered by
default with JSON that conforms to the schema the request sent, as the real API's constrained decoding does
(ai.google.dev/gemini-api/docs/structured-output, read 2026-11-29): every required property; for an array of
objects with an enum ``name`` one item per enum value the prompt mentions; booleans true; a "score" integer near
its maximum. Markers in the request's text (the judge's prompt carries the player's name) change the answer:

- ``QFAIL:<criterion>`` (repeatable): that item's boolean is false with reason "QFAIL marker", and the score drops
  to 40% of its range;
- ``QJUDGE:500``: 500 INTERNAL (on every attempt, so the client's retries run out);
- ``QJUDGE:safety``: the prompt is blocked (``promptFeedback.blockReason`` SAFETY);
- ``QJUDGE:garbage``: 200 with a text that is not JSON.

Only the standard library and Pillow: no pytest, so ``bench/throughput.py`` can import it too.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import hashlib
import io
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

DEFAULT_DESCRIPTION = "Oval face, medium-brown skin, short black hair, light stubble, athletic build."
# gemini-2.5-flash-image answers aspect_ratio="4:5" with 896x1152 (not exactly 4:5) and bills 1290 tokens.
DEFAULT_IMAGE_SIZE = (896, 1152)
IMAGE_TOKENS = 1290
HANG_S = 3600.0  # "forever" for a test; stop() wakes sleeping handlers

_VERSION = r"(?P<version>v1(?:alpha|beta)?)"
# (HTTP method, path pattern) -> the request's kind, as recorded in RecordedRequest.kind.
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^/{_VERSION}/models/(?P<model>[^/:]+):generateContent$"), "generate_content"),
    ("GET", re.compile(rf"^/{_VERSION}/models/(?P<model>[^/:]+)$"), "get_model"),
    ("GET", re.compile(rf"^/{_VERSION}/models$"), "list_models"),
    ("POST", re.compile(rf"^/{_VERSION}/models/(?P<model>[^/:]+):batchGenerateContent$"), "batch_create"),
    ("GET", re.compile(rf"^/{_VERSION}/batches$"), "batch_list"),
    ("GET", re.compile(rf"^/{_VERSION}/batches/(?P<batch>[^/:]+)$"), "batch_get"),
    ("POST", re.compile(rf"^/{_VERSION}/batches/(?P<batch>[^/:]+):cancel$"), "batch_cancel"),
    # The resumable upload's start; its chunks go to the same path with ?upload_id= ("upload_chunk").
    ("POST", re.compile(rf"^/upload/{_VERSION}/files$"), "upload"),
    ("GET", re.compile(rf"^/{_VERSION}/files/(?P<file>[^/:]+)$"), "file_get"),
    ("GET", re.compile(rf"^/{_VERSION}/files/(?P<file>[^/:]+):download$"), "download"),
]
# Kinds whose request body must be a JSON object.
_JSON_BODY_KINDS = {"generate_content", "judge", "batch_create", "upload"}
# generateContent kinds: a plain call, or a structured one (a JSON response schema: the quality judge's).
_GENERATE_KINDS = {"generate_content", "judge"}
_QFAIL = re.compile(r"QFAIL:([a-z_]+)")
_QJUDGE = re.compile(r"QJUDGE:([a-z0-9]+)")
# RecordedRequest.kind -> the short names of GeminiTestServer.batch_request_counts.
_BATCH_KINDS = {
    "batch_create": "create",
    "batch_get": "get",
    "batch_list": "list",
    "batch_cancel": "cancel",
    "upload": "upload",
    "download": "download",
}
# Gemini's Batch API takes inline requests up to 20 MB for the whole batchGenerateContent request; bigger
# batches must go through an uploaded JSONL file (https://ai.google.dev/gemini-api/docs/batch-api).
# 20 MiB: Google's front end reports "Request payload size exceeds the limit: 20971520 bytes."
BATCH_INLINE_LIMIT_BYTES = 20 * 1024 * 1024
BATCH_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
_ENDED_STATES = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"}
_FILE_TTL = datetime.timedelta(hours=48)  # uploaded files expire after 48 hours
_METHOD_NAMES = {
    "generate_content": "generateContent",
    "judge": "generateContent",
    "get_model": "get",
    "batch_create": "batchGenerateContent",
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One answer: HTTP status and JSON body, sent after ``delay_s`` seconds.

    ``body=None`` means "the server's default answer for this model" (see ``slow_reply``).
    """

    status: int = 200
    body: dict[str, Any] | None = None
    delay_s: float = 0.0


def make_png(size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> bytes:
    """A non-uniform RGB PNG: colour gradients, noise (for a realistic ~MB size) and a bust silhouette."""
    return _png(int(size[0]), int(size[1]))


@lru_cache(maxsize=16)
def _png(width: int, height: int) -> bytes:
    vertical = Image.linear_gradient("L").resize((width, height))
    horizontal = Image.linear_gradient("L").rotate(90).resize((width, height))
    noise = Image.frombytes("L", (width, height), random.Random(width * height).randbytes(width * height))
    blue = Image.blend(Image.new("L", (width, height), 150), noise, 0.2)  # deterministic noise
    image = Image.merge("RGB", (vertical, horizontal, blue))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.3, height * 0.12, width * 0.7, height * 0.52), fill=(150, 100, 70))
    draw.rounded_rectangle((width * 0.12, height * 0.6, width * 0.88, height * 1.1), 60, fill=(200, 30, 40))
    draw.text((width * 0.45, height * 0.72), "23", fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _answer(parts: list[dict[str, Any]], candidates_tokens: int) -> dict[str, Any]:
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    return {"candidates": [candidate], "usageMetadata": {"candidatesTokenCount": candidates_tokens}}


def image_reply(size: tuple[int, int] = DEFAULT_IMAGE_SIZE, *, caption: str | None = None) -> Reply:
    """200 with one inline PNG part (optionally after a text part), finishReason STOP."""
    data = base64.b64encode(make_png(size)).decode("ascii")
    parts: list[dict[str, Any]] = [{"text": caption}] if caption else []
    parts.append({"inlineData": {"mimeType": "image/png", "data": data}})
    return Reply(body=_answer(parts, IMAGE_TOKENS))


def text_reply(text: str = DEFAULT_DESCRIPTION) -> Reply:
    """200 with one text part. For an image model this is the "answered with words only" case."""
    return Reply(body=_answer([{"text": text}], len(text) // 4 + 1))


def safety_reply(finish_reason: str = "IMAGE_SAFETY") -> Reply:
    """200 whose candidate has no content, only a safety finishReason ("IMAGE_SAFETY" or "SAFETY")."""
    candidate: dict[str, Any] = {"finishReason": finish_reason, "index": 0}
    if finish_reason == "SAFETY":
        candidate["safetyRatings"] = [
            {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "HIGH", "blocked": True}
        ]
    return Reply(body={"candidates": [candidate], "usageMetadata": {"candidatesTokenCount": 0}})


def blocked_reply(block_reason: str = "SAFETY") -> Reply:
    """200 with no candidates: the prompt itself was blocked (``promptFeedback.blockReason``)."""
    return Reply(body={"promptFeedback": {"blockReason": block_reason}, "usageMetadata": {}})


def error_reply(
    code: int, message: str, *, details: list[dict[str, Any]] | None = None, status: str | None = None
) -> Reply:
    """An error in Google's JSON format: ``{"error": {"code", "message", "status", "details"}}``.

    ``status`` defaults to the usual name for ``code`` (400 INVALID_ARGUMENT, 404 NOT_FOUND, ...).
    """
    error: dict[str, Any] = {"code": code, "message": message, "status": status or _STATUS_NAMES.get(code, "UNKNOWN")}
    if details is not None:
        error["details"] = details
    return Reply(status=code, body={"error": error})


def rate_limited_reply(retry_delay_s: float = 1.0) -> Reply:
    """429 RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` detail carrying ``retryDelay``."""
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _duration(retry_delay_s)}
    message = "You exceeded your current quota, please check your plan and billing details."
    return error_reply(429, message, details=[retry_info])


def internal_error_reply() -> Reply:
    """500 INTERNAL."""
    return error_reply(500, "An internal error has occurred. Please retry or report the problem.")


def unavailable_reply() -> Reply:
    """503 UNAVAILABLE."""
    return error_reply(503, "The model is overloaded. Please try again later.")


def slow_reply(delay_s: float, then: Reply | None = None) -> Reply:
    """``then`` (default: the model's default answer) sent only after ``delay_s`` seconds."""
    return replace(then or Reply(), delay_s=delay_s)


def hang_reply() -> Reply:
    """Never answers within a test's lifetime (until ``stop()``): for client-timeout tests."""
    return slow_reply(HANG_S)


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON form: "1s", "0.25s"."""
    return f"{round(seconds, 3):g}s"


# --- the model catalogue -------------------------------------------------------------------------

# What ``GET /v1beta/models/{id}`` lists for the models this project uses.
SUPPORTED_METHODS = ("generateContent", "countTokens", "batchGenerateContent")
# gemini-2.5-flash-image: 32k tokens in and out; gemini-2.5-flash: 1M in, 64k out (and it thinks).
_TOKEN_LIMITS = {"image": (32_768, 32_768), "text": (1_048_576, 65_536)}


@dataclass(frozen=True)
class ModelInfo:
    """One catalogue entry. ``kind`` decides the default answer: an image or a text description.

    ``kind=None`` infers it from the id (contains "image"), like the server does without a catalogue.
    """

    id: str  # without the "models/" prefix, e.g. "gemini-2.5-flash-image"
    display_name: str | None = None
    kind: Literal["image", "text"] | None = None
    description: str = ""
    version: str = "001"

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.id.removeprefix("models/"))
        if self.kind is None:
            object.__setattr__(self, "kind", "image" if "image" in self.id else "text")

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def to_json(self) -> dict[str, Any]:
        """Gemini's ``Model`` resource, as ``GET /v1beta/models/{id}`` returns it."""
        input_limit, output_limit = _TOKEN_LIMITS[self.kind or "text"]
        model: dict[str, Any] = {
            "name": f"models/{self.id}",
            "version": self.version,
            "displayName": self.display_name or self.id,
            "description": self.description or f"Test double of {self.id}",
            "inputTokenLimit": input_limit,
            "outputTokenLimit": output_limit,
            "supportedGenerationMethods": list(SUPPORTED_METHODS),
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2,
        }
        if not self.is_image:
            model["thinking"] = True
        return model


def _model_info(model: str | ModelInfo) -> ModelInfo:
    return model if isinstance(model, ModelInfo) else ModelInfo(model)


def model_not_found_reply(model: str, *, api_version: str = "v1beta", method: str = "generateContent") -> Reply:
    """404 NOT_FOUND, word for word what the real API answers for a model it does not (or no longer) serve."""
    return error_reply(
        404,
        f"models/{model} is not found for API version {api_version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


# --- the server ----------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``status`` and ``ended`` are set once it was answered."""

    method: str
    path: str
    api_version: str | None
    model: str | None
    api_key: str | None  # the x-goog-api-key header
    headers: dict[str, str]
    body: Any  # the parsed JSON body, None if there was none
    started: float  # time.monotonic()
    status: int | None = None
    ended: float | None = None
    scripted: bool = False
    # What the request asked for: "generate_content", "get_model", "list_models", ... ("unknown" if no route).
    kind: str = "unknown"

    @property
    def duration_s(self) -> float | None:
        """Seconds from arrival to answer, None while unanswered."""
        return None if self.ended is None else self.ended - self.started


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    scripts: dict[str, deque[Reply]] = field(default_factory=dict)  # by request kind
    in_flight: int = 0
    peak_in_flight: int = 0
    count_429: int = 0
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # by model: (tokens, refilled at)
    batches: dict[str, _Batch] = field(default_factory=dict)  # by id, in creation order
    files: dict[str, _File] = field(default_factory=dict)  # by id, complete uploads and batch results
    uploads: dict[str, _File] = field(default_factory=dict)  # by upload id, until finalized
    batch_scripts: dict[str, deque[Reply]] = field(default_factory=dict)  # by request key


@dataclass
class _Batch:
    """One batch job; its state follows from its age unless cancelled or forced."""

    id: str
    model: str
    display_name: str
    items: list[tuple[str, Any, dict[str, Any] | None]]  # (key, GenerateContentRequest, inline metadata)
    input_file: str | None  # "files/..." for a file batch, None for inline requests
    created: float  # time.monotonic()
    create_time: str
    forced: str | None = None  # a state from BATCH_STATES that overrides the clock
    end_time: str | None = None
    results: list[dict[str, Any]] | None = None  # once SUCCEEDED: inlinedResponses or the result lines
    # Held while the results are computed, so two concurrent polls do not both use up the scripted answers.
    settling: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return f"batches/{self.id}"


@dataclass
class _File:
    """An uploaded file (source UPLOADED) or a batch's results (GENERATED, the only kind one can download)."""

    id: str
    mime_type: str
    size_bytes: int  # as announced; the upload must deliver exactly that many bytes
    source: str = "UPLOADED"
    display_name: str | None = None
    data: bytearray = field(default_factory=bytearray)
    create_time: str = ""

    @property
    def name(self) -> str:
        return f"files/{self.id}"


class GeminiTestServer:
    """A threaded local Gemini API (generateContent, models, batches, files) on 127.0.0.1 and a free port."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        requests_per_second: float | None = None,
        failure_rate: float = 0.0,
        seed: int = 0,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        api_key: str | None = None,
        models: Iterable[str | ModelInfo] | None = None,
        batch_pending_s: float = 0.05,
        batch_running_s: float = 0.1,
        batch_inline_limit_bytes: int = BATCH_INLINE_LIMIT_BYTES,
    ) -> None:
        """``api_key``, when given, is the only key accepted (others get Google's 400 API_KEY_INVALID).

        ``models``, when given, is the catalogue (ids or ``ModelInfo``s): other models get the real API's
        404 NOT_FOUND on every endpoint. ``None`` accepts any model id.

        A batch job is PENDING for ``batch_pending_s``, then RUNNING for ``batch_running_s``, then SUCCEEDED;
        a ``batchGenerateContent`` with inline requests bigger than ``batch_inline_limit_bytes`` gets 400.
        """
        self.latency_s = latency_s
        self.requests_per_second = requests_per_second
        self.failure_rate = failure_rate
        self.seed = seed
        self.image_size = image_size
        self.api_key = api_key
        self.batch_pending_s = batch_pending_s
        self.batch_running_s = batch_running_s
        self.batch_inline_limit_bytes = batch_inline_limit_bytes
        self._catalogue: dict[str, ModelInfo] | None = None
        if models is not None:
            self._catalogue = {info.id: info for info in map(_model_info, models)}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._state = _State()
        self._random = random.Random(seed)
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # lifecycle

    def start(self) -> GeminiTestServer:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.gemini = self
        self._httpd = httpd
        # A short poll interval keeps stop() (httpd.shutdown) fast.
        serve = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="gemini-server", daemon=True)
        self._thread = serve
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close every open connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GeminiTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``HttpOptions(base_url=...)``."""
        if self._httpd is None:
            raise RuntimeError("GeminiTestServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    # scripting and inspection

    def enqueue(self, *replies: Reply, kind: str = "generate_content") -> None:
        """Answer the next requests of ``kind`` with ``replies``, in order, before falling back to the default.

        Other kinds ("get_model", ...) take error replies, or ``slow_reply(s)`` to delay their normal answer.
        """
        with self._lock:
            self._state.scripts.setdefault(kind, deque()).extend(replies)

    def reset(self) -> None:
        """Forget requests, counters, scripted replies, batches and files; refill the rate limiter; reseed.

        The model catalogue is configuration and stays as it is.
        """
        with self._lock:
            in_flight = self._state.in_flight
            self._state = _State(in_flight=in_flight, peak_in_flight=in_flight)  # every model's bucket full again
            self._random = random.Random(self.seed)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._lock:
            return list(self._state.requests)

    @property
    def in_flight(self) -> int:
        """Requests received but not answered yet."""
        with self._lock:
            return self._state.in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests in flight at once since the last reset."""
        with self._lock:
            return self._state.peak_in_flight

    def peak_in_flight_of(self, model: str) -> int:
        """The most `generateContent` calls to `model` in flight at once: what a client's pool of calls limits (the
        judge's calls to another model, and `models.get` preflights, left out)."""
        edges = sorted(
            (at, step)
            for request in self.requests
            if request.model == model and request.kind == "generate_content"
            for at, step in ((request.started, 1), (request.ended if request.ended is not None else float("inf"), -1))
        )  # at equal times an answer (-1) sorts before an arrival (+1)
        peak = held = 0
        for _, step in edges:
            held += step
            peak = max(peak, held)
        return peak

    @property
    def count_429(self) -> int:
        """429s sent by the rate limiter (scripted 429s are not counted)."""
        with self._lock:
            return self._state.count_429

    @property
    def request_counts(self) -> Counter[str]:
        """How many requests of each kind ("generate_content", "get_model", ...) arrived since the last reset."""
        return Counter(record.kind for record in self.requests)

    @property
    def batch_request_counts(self) -> Counter[str]:
        """Batch and Files API requests by kind: "create", "get", "list", "cancel", "upload", "download".

        An upload counts once (its start), however many chunks carried the bytes.
        """
        return Counter(_BATCH_KINDS[record.kind] for record in self.requests if record.kind in _BATCH_KINDS)

    # batches

    def script_batch(self, key: str, *replies: Reply) -> None:
        """Answer the batch request ``key`` with ``replies``, one per batch job that contains it, in order.

        Inline requests are keyed by ``metadata["key"]`` (else their position: "0", "1", ...), file lines
        by their "key". A non-200 reply becomes the request's ``error``; ``delay_s`` is ignored.
        """
        with self._lock:
            self._state.batch_scripts.setdefault(key, deque()).extend(replies)

    def force_batch_state(self, name: str, state: str) -> None:
        """Put a batch job in ``state`` ("JOB_STATE_EXPIRED", "BATCH_STATE_FAILED" or "CANCELLED") for good."""
        short = state.removeprefix("JOB_STATE_").removeprefix("BATCH_STATE_")
        if short not in BATCH_STATES:
            raise ValueError(f"unknown batch state {state!r}: one of {', '.join(BATCH_STATES)}")
        with self._lock:
            self._state.batches[name.removeprefix("batches/")].forced = short

    @property
    def batch_names(self) -> list[str]:
        """The batch jobs created since the last reset, oldest first ("batches/...")."""
        with self._lock:
            return [batch.name for batch in self._state.batches.values()]

    # the model catalogue

    @property
    def models(self) -> list[ModelInfo] | None:
        """The catalogue in listing order, None when any model is accepted."""
        with self._lock:
            return None if self._catalogue is None else list(self._catalogue.values())

    def add_model(self, model: str | ModelInfo) -> ModelInfo:
        """Serve ``model`` from now on (replacing an entry with the same id)."""
        info = _model_info(model)
        with self._lock:
            if self._catalogue is None:
                raise RuntimeError("this server accepts any model: pass models=[...] to manage a catalogue")
            self._catalogue[info.id] = info
        return info

    def remove_model(self, model: str) -> None:
        """Retire ``model``: from now on every request naming it gets 404 NOT_FOUND, like a shut-down model."""
        with self._lock:
            if self._catalogue is None:
                raise RuntimeError("this server accepts any model: pass models=[...] to manage a catalogue")
            del self._catalogue[model.removeprefix("models/")]

    def _lookup_model(self, model: str) -> ModelInfo | None:
        """The catalogue entry for ``model``; without a catalogue every id has one, None if it is not served."""
        with self._lock:
            if self._catalogue is None:
                return ModelInfo(model)
            return self._catalogue.get(model)

    # request handling (called from handler threads)

    def _arrive(self, record: RecordedRequest) -> None:
        with self._lock:
            self._state.requests.append(record)
            self._state.in_flight += 1
            self._state.peak_in_flight = max(self._state.peak_in_flight, self._state.in_flight)

    def _depart(self, record: RecordedRequest, status: int | None) -> None:
        with self._lock:
            record.status, record.ended = status, time.monotonic()
            self._state.in_flight -= 1

    def _next_reply(self, record: RecordedRequest) -> Reply:
        """The next scripted reply for the request's kind, else the default one.

        Only ``generateContent`` has a default decided on arrival (rate limit, failures); other kinds get
        ``Reply()`` (body None): "the endpoint's normal answer", computed after the delay by ``_respond``.
        """
        with self._lock:
            script = self._state.scripts.get(record.kind)
            reply = script.popleft() if script else None
        record.scripted = reply is not None
        if reply is not None:
            return reply
        return self._default_reply(record) if record.kind in _GENERATE_KINDS else Reply()

    def _default_reply(self, record: RecordedRequest) -> Reply:
        """Rate limit, then random failures, then an image or a text answer depending on the model (a structured
        request: the JSON its schema asks for, see the module's docstring)."""
        with self._lock:
            retry_after = self._take_token(record.model or "")
            if retry_after is not None:
                self._state.count_429 += 1
                return rate_limited_reply(retry_after)
            failed = self.failure_rate > 0 and self._random.random() < self.failure_rate
        if failed:
            return internal_error_reply()
        if record.kind == "judge":
            return _structured_reply(record.body)
        return self._model_answer(record.model or "")

    def _model_answer(self, model: str) -> Reply:
        """An image for image models, a description for the others (the catalogue's kind, else the id)."""
        info = self._lookup_model(model) or ModelInfo(model)
        return image_reply(self.image_size) if info.is_image else text_reply()

    def _check(self, record: RecordedRequest, params: dict[str, str], size: int) -> Reply | None:
        """An error reply for a request the real API would reject, else None."""
        if record.kind == "unknown":
            return error_reply(404, f"Method not found: {record.method} {record.path}")
        # An upload's chunks carry no key: the upload id in their URL authorizes them.
        if self.api_key is not None and record.api_key != self.api_key and record.kind != "upload_chunk":
            return _invalid_key_reply()
        if record.model is not None and self._lookup_model(record.model) is None:
            method = _METHOD_NAMES.get(record.kind, "get")
            return model_not_found_reply(record.model, api_version=record.api_version or "v1beta", method=method)
        if record.kind in _JSON_BODY_KINDS and not isinstance(record.body, dict):
            return error_reply(400, "Invalid JSON payload received.")
        if record.kind == "batch_create":
            return self._check_batch(record.body, size)
        with self._lock:
            state = self._state
            if "batch" in params and params["batch"] not in state.batches:
                return error_reply(404, f"Batch batches/{params['batch']} not found.")
            if "file" in params and params["file"] not in state.files:
                return error_reply(404, f"File files/{params['file']} not found.")
        return None

    def _check_batch(self, body: dict[str, Any], size: int) -> Reply | None:
        """``batchGenerateContent`` needs exactly one source; inline requests are capped in size."""
        source = (body.get("batch") or {}).get("inputConfig") or {}
        if ("requests" in source) == ("fileName" in source):
            return error_reply(400, "batch.input_config must set exactly one of requests or file_name.")
        if "requests" in source and size > self.batch_inline_limit_bytes:
            return error_reply(400, f"Request payload size exceeds the limit: {self.batch_inline_limit_bytes} bytes.")
        file_id = str(source.get("fileName", "")).removeprefix("files/")
        if "fileName" in source:
            with self._lock:
                if file_id not in self._state.files:
                    return error_reply(404, f"File files/{file_id} not found.")
        return None

    def _respond(self, record: RecordedRequest, reply: Reply, params: dict[str, str], raw: bytes) -> _Response:
        """The HTTP answer for ``reply``; a body-less reply becomes the endpoint's normal answer."""
        if reply.body is None:
            if record.kind not in _GENERATE_KINDS:
                return self._serve(record, params, raw)
            reply = self._default_reply(record)  # slow_reply() of the default answer
        if record.kind not in _GENERATE_KINDS:
            return _Response.json(reply.status, reply.body)
        return _Response.json(reply.status, self._finish_body(reply, record.model or "", record.body))

    def _serve(self, record: RecordedRequest, params: dict[str, str], raw: bytes) -> _Response:
        """The normal answer of every endpoint but ``generateContent``."""
        if record.kind == "get_model":
            info = self._lookup_model(params["model"])
            assert info is not None  # _check answered 404 otherwise
            return _Response.json(200, info.to_json())
        if record.kind == "list_models":
            # Without a catalogue there is nothing to list: any id is accepted, none is "available".
            catalogue = self.models or []
            page, next_token = _page([info.to_json() for info in catalogue], record.path)
            return _Response.json(200, {"models": page, **next_token})
        if record.kind == "batch_create":
            return _Response.json(200, self._create_batch(record.model or "", record.body))
        if record.kind == "batch_get":
            return _Response.json(200, self._batch_operation(params["batch"]))
        if record.kind == "batch_list":
            with self._lock:
                ids = list(self._state.batches)
            page, next_token = _page(ids, record.path)
            return _Response.json(200, {"operations": [self._batch_operation(id_) for id_ in page], **next_token})
        if record.kind == "batch_cancel":
            return self._cancel_batch(params["batch"])
        if record.kind == "upload":
            return self._start_upload(record, params["version"])
        if record.kind == "upload_chunk":
            return self._upload_chunk(record, params["version"], raw)
        if record.kind == "file_get":
            with self._lock:
                file = self._state.files[params["file"]]
            return _Response.json(200, self._file_json(file, params["version"]))
        if record.kind == "download":
            return self._download(params["file"])
        raise AssertionError(f"no answer for {record.kind}")

    # the Batch API

    def _create_batch(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """Register a job from inline requests or an uploaded JSONL file; answer with its operation."""
        batch_body = body["batch"]
        source = batch_body["inputConfig"]
        items: list[tuple[str, Any, dict[str, Any] | None]] = []
        if "requests" in source:
            for index, inline in enumerate((source["requests"] or {}).get("requests") or []):
                metadata = inline.get("metadata")
                key = str((metadata or {}).get("key", index))
                items.append((key, inline.get("request"), metadata))
        else:
            with self._lock:
                data = bytes(self._state.files[source["fileName"].removeprefix("files/")].data)
            for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
                if line.strip():
                    items.append(_jsonl_item(line, number))
        batch = _Batch(
            id=_resource_id(),
            model=model,
            display_name=batch_body.get("displayName") or "",
            items=items,
            input_file=source.get("fileName"),
            created=time.monotonic(),
            create_time=_now(),
        )
        with self._lock:
            self._state.batches[batch.id] = batch
        return self._batch_operation(batch.id)

    def _cancel_batch(self, batch_id: str) -> _Response:
        """A pending or running job is cancelled at once; an ended one cannot be."""
        with self._lock:
            batch = self._state.batches[batch_id]
            if self._batch_state(batch) in _ENDED_STATES:
                reply = error_reply(400, f"Batch {batch.name} has already ended.", status="FAILED_PRECONDITION")
                return _Response.json(reply.status, reply.body)
            batch.forced = "CANCELLED"
        return _Response.json(200, {})

    def _batch_state(self, batch: _Batch) -> str:
        """The job's state now (lock held): forced, else by age."""
        if batch.forced is not None:
            return batch.forced
        age = time.monotonic() - batch.created
        if age < self.batch_pending_s:
            return "PENDING"
        return "RUNNING" if age < self.batch_pending_s + self.batch_running_s else "SUCCEEDED"

    def _batch_operation(self, batch_id: str) -> dict[str, Any]:
        """The job as the API shows it: a long-running operation whose metadata is a GenerateContentBatch."""
        with self._lock:
            batch = self._state.batches[batch_id]
        with batch.settling:  # the answers are computed once, outside the server's lock: images take a while
            with self._lock:
                pending = self._batch_state(batch) == "SUCCEEDED" and batch.results is None
            if pending:
                inline = batch.input_file is None
                results = [self._batch_result(batch.model, *item, inline=inline) for item in batch.items]
                with self._lock:
                    batch.results = results
        with self._lock:
            return self._operation_json(batch)

    def _operation_json(self, batch: _Batch) -> dict[str, Any]:
        """(lock held) ``batches/{id}`` as JSON; the SDK reads ``metadata`` (state, output) only."""
        state = self._batch_state(batch)
        if state in _ENDED_STATES and batch.end_time is None:
            batch.end_time = _now()
        results = batch.results if state == "SUCCEEDED" else None
        stats = {"requestCount": str(len(batch.items))}
        if results is not None:
            failed = sum("error" in result for result in results)
            stats |= {"successfulRequestCount": str(len(results) - failed), "failedRequestCount": str(failed)}
        elif state not in _ENDED_STATES:
            stats["pendingRequestCount"] = str(len(batch.items))
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "name": batch.name,
            "model": f"models/{batch.model}",
            "displayName": batch.display_name,
            "createTime": batch.create_time,
            "updateTime": batch.end_time or batch.create_time,
            "batchStats": stats,
            "state": f"BATCH_STATE_{state}",
        }
        if batch.input_file is not None:
            metadata["inputConfig"] = {"fileName": batch.input_file}
        if batch.end_time is not None:
            metadata["endTime"] = batch.end_time
        operation: dict[str, Any] = {"name": batch.name, "metadata": metadata}
        if state in _ENDED_STATES:
            operation["done"] = True
        if results is not None:
            output = self._batch_output(batch, results)
            metadata["output"] = output
            operation["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput",
                **output,
            }
        elif state == "FAILED":
            operation["error"] = {"code": 13, "message": "The batch job failed."}
        return operation

    def _batch_output(self, batch: _Batch, results: list[dict[str, Any]]) -> dict[str, Any]:
        """(lock held) Inline jobs answer inline; file jobs get a results file (created the first time)."""
        if batch.input_file is None:
            return {"inlinedResponses": {"inlinedResponses": results}}
        file_id = f"batch-{batch.id}"
        if file_id not in self._state.files:
            data = "".join(json.dumps(result) + "\n" for result in results).encode()
            self._state.files[file_id] = _File(
                file_id, "application/jsonl", len(data), "GENERATED", data=bytearray(data), create_time=_now()
            )
        return {"responsesFile": f"files/{file_id}"}

    def _batch_result(
        self, model: str, key: str, request: Any, metadata: dict[str, Any] | None, *, inline: bool
    ) -> dict[str, Any]:
        """One request's answer: scripted for its key, else seeded random failures, else the model's answer.

        Inline results echo the request's metadata (an InlinedResponse); file result lines carry the key.
        """
        with self._lock:
            script = self._state.batch_scripts.get(key)
            reply = script.popleft() if script else None
            failed = reply is None and self.failure_rate > 0 and self._random.random() < self.failure_rate
        if not isinstance(request, dict):
            reply = error_reply(400, f"Invalid GenerateContentRequest for key {key!r}.")
        elif reply is None:
            reply = internal_error_reply() if failed else self._model_answer(model)
        elif reply.body is None:
            reply = replace(self._model_answer(model), status=reply.status)
        result: dict[str, Any] = {}
        if not inline:
            result["key"] = key
        elif metadata is not None:
            result["metadata"] = metadata
        if reply.status == 200:
            result["response"] = self._finish_body(reply, model, request)
        else:
            assert reply.body is not None
            error = reply.body.get("error") or {}
            result["error"] = {"code": reply.status, "message": error.get("message", "")}
        return result

    # the Files API

    def _start_upload(self, record: RecordedRequest, version: str) -> _Response:
        """The resumable upload's start: remember the announced file, answer with where to send its bytes."""
        # The SDK sends the File in snake_case ("mime_type"); the API takes both spellings, like any proto JSON.
        announced = record.body.get("file") or {}

        def announced_field(camel: str, snake: str, header: str) -> Any:
            return announced.get(camel) or announced.get(snake) or _header(record, f"X-Goog-Upload-Header-{header}")

        file = _File(
            id=str(announced.get("name") or _resource_id()).removeprefix("files/"),
            mime_type=announced_field("mimeType", "mime_type", "Content-Type") or "",
            size_bytes=int(announced_field("sizeBytes", "size_bytes", "Content-Length") or 0),
            display_name=announced.get("displayName") or announced.get("display_name"),
            create_time=_now(),
        )
        upload_id = uuid.uuid4().hex
        with self._lock:
            self._state.uploads[upload_id] = file
        url = f"{self.base_url}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
        return _Response(200, headers={"X-Goog-Upload-Status": "active", "X-Goog-Upload-URL": url})

    def _upload_chunk(self, record: RecordedRequest, version: str, raw: bytes) -> _Response:
        """Append a chunk at its offset; "finalize" completes the file and answers ``{"file": File}``."""
        command = _header(record, "X-Goog-Upload-Command") or ""
        offset = int(_header(record, "X-Goog-Upload-Offset") or 0)
        # Errors say "final" too: without an X-Goog-Upload-Status the SDK retries for seconds.
        final = {"X-Goog-Upload-Status": "final"}
        with self._lock:
            file = self._state.uploads.get(_query(record.path).get("upload_id", ""))
            if file is None:
                return _Response.json(404, error_reply(404, "Upload not found.").body, final)
            if offset != len(file.data):
                message = f"Upload offset {offset} is not the {len(file.data)} bytes received so far."
                return _Response.json(400, error_reply(400, message).body, final)
            file.data += raw
            if "finalize" not in command:
                return _Response(200, headers={"X-Goog-Upload-Status": "active"})
            del self._state.uploads[_query(record.path)["upload_id"]]
            if len(file.data) != file.size_bytes:
                message = f"Uploaded {len(file.data)} bytes, {file.size_bytes} were announced."
                return _Response.json(400, error_reply(400, message).body, final)
            self._state.files[file.id] = file
        return _Response.json(200, {"file": self._file_json(file, version)}, final)

    def _download(self, file_id: str) -> _Response:
        """A generated file's bytes (``?alt=media``); like the real API, uploaded files cannot be downloaded."""
        with self._lock:
            file = self._state.files[file_id]
            data = bytes(file.data)
        if file.source != "GENERATED":
            reply = error_reply(400, f"Only generated files can be downloaded; {file.name} was uploaded.")
            return _Response.json(reply.status, reply.body)
        return _Response(200, data, content_type=file.mime_type)

    def _file_json(self, file: _File, version: str) -> dict[str, Any]:
        """Gemini's ``File`` resource."""
        created = datetime.datetime.fromisoformat(file.create_time)
        body: dict[str, Any] = {
            "name": file.name,
            "mimeType": file.mime_type,
            "sizeBytes": str(len(file.data)),
            "createTime": file.create_time,
            "updateTime": file.create_time,
            "expirationTime": _rfc3339(created + _FILE_TTL),
            "sha256Hash": base64.b64encode(hashlib.sha256(file.data).hexdigest().encode()).decode(),
            "uri": f"{self.base_url}/{version}/{file.name}",
            "state": "ACTIVE",
            "source": file.source,
        }
        if file.display_name:
            body["displayName"] = file.display_name
        if file.source == "GENERATED":
            body["downloadUri"] = f"{self.base_url}/download/{version}/{file.name}:download?alt=media"
        return body

    def _bucket_size(self) -> float:
        return max(1.0, self.requests_per_second or 0.0)

    def _take_token(self, model: str) -> float | None:
        """The model's token bucket (lock held): None if the request may pass, else seconds until it could.

        One bucket per model: Gemini's limits are per project and "vary depending on the specific model", each model
        with its own requests per minute (ai.google.dev/gemini-api/docs/rate-limits and .../docs/quota, read
        2026-11-29); the quality judge's Flash calls do not use up the image model's.
        """
        rate = self.requests_per_second
        if rate is None:
            return None
        now = time.monotonic()
        tokens, refilled_at = self._state.buckets.get(model, (self._bucket_size(), now))
        tokens = min(self._bucket_size(), tokens + (now - refilled_at) * rate)
        if tokens >= 1.0:
            self._state.buckets[model] = (tokens - 1.0, now)
            return None
        self._state.buckets[model] = (tokens, now)
        return max(0.001, (1.0 - tokens) / rate)

    def _finish_body(self, reply: Reply, model: str, request_body: Any) -> dict[str, Any]:
        """The reply's body, with modelVersion, responseId and token counts filled in for 200s."""
        assert reply.body is not None
        body = copy.deepcopy(reply.body)
        if reply.status != 200:
            return body
        body.setdefault("modelVersion", model)
        body.setdefault("responseId", uuid.uuid4().hex[:22])
        usage = body.setdefault("usageMetadata", {})
        usage.setdefault("promptTokenCount", _prompt_tokens(request_body))
        output = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
        usage["totalTokenCount"] = usage["promptTokenCount"] + output
        return body


@dataclass(frozen=True)
class _Response:
    """What goes on the wire: status, payload and extra headers (the Files API's X-Goog-Upload-*)."""

    status: int
    payload: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=UTF-8"

    @staticmethod
    def json(status: int, body: Any, headers: dict[str, str] | None = None) -> _Response:
        return _Response(status, json.dumps(body).encode(), headers or {})


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    """The request's kind and path parameters (version, model, ...); ("unknown", {}) if nothing matches."""
    plain = path.split("?", 1)[0]
    for route_method, pattern, kind in _ROUTES:
        match = pattern.match(plain)
        if match and method == route_method:
            if kind == "upload" and "upload_id" in _query(path):
                kind = "upload_chunk"
            return kind, {name: value for name, value in match.groupdict().items() if value is not None}
    return "unknown", {}


def _query(path: str) -> dict[str, str]:
    """The query string's parameters, the first value of each."""
    return {name: values[0] for name, values in parse_qs(urlsplit(path).query).items()}


def _page(items: list[Any], path: str, *, default_size: int = 50) -> tuple[list[Any], dict[str, str]]:
    """One page of ``items`` for ``?pageSize=&pageToken=``; the token is just the offset of the next page."""
    query = _query(path)
    size = int(query.get("pageSize") or default_size)
    start = int(query.get("pageToken") or 0)
    end = start + size
    return items[start:end], ({"nextPageToken": str(end)} if end < len(items) else {})


class _HTTPServer(ThreadingHTTPServer):
    """One daemon thread per connection; a listen backlog big enough for a burst of new connections."""

    daemon_threads = True
    request_queue_size = 256  # read by listen() in __init__, so it must be a class attribute
    gemini: GeminiTestServer


class _Handler(BaseHTTPRequestHandler):
    """Routes ``POST /{version}/models/{model}:generateContent``; everything else is a Google-style 404."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    server_version = "GeminiTestServer/1.0"

    @property
    def gemini(self) -> GeminiTestServer:
        assert isinstance(self.server, _HTTPServer)
        return self.server.gemini

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.gemini._lock:
            self.gemini._connections.add(self.connection)

    def finish(self) -> None:
        with self.gemini._lock:
            self.gemini._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``server.requests`` instead."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        gemini = self.gemini
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind, params = _route(self.command, self.path)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            api_version=params.get("version"),
            model=params.get("model"),
            api_key=self.headers.get("x-goog-api-key"),
            headers=dict(self.headers.items()),
            body=body,
            started=time.monotonic(),
            kind="judge" if kind == "generate_content" and _is_structured(body) else kind,
        )
        gemini._arrive(record)
        answered = False
        try:
            reply = gemini._check(record, params, len(raw)) or gemini._next_reply(record)
            # latency_s is the model's time to answer: generateContent waits it (not the rate limiter's quick 429s).
            # Metadata, batch and file requests generate nothing (models.get returns a Model's version, token limits
            # and parameters: ai.google.dev/api/models, read 2026-11-29; a batch job is created, then polled for its
            # state: ai.google.dev/gemini-api/docs/batch-api, read 2026-11-29): none of the model's time is theirs.
            generating = record.kind in _GENERATE_KINDS and (reply.status != 429 or record.scripted)
            delay = reply.delay_s + (gemini.latency_s if generating else 0.0)
            if delay > 0 and gemini._stopping.wait(delay):
                return  # stopping: drop the request unanswered
            response = gemini._respond(record, reply, params, raw)
            gemini._depart(record, response.status)  # before sending, so a client that has its answer sees it
            answered = True
            self._send(response)
        except OSError:
            pass  # the client gave up (e.g. timed out) and closed the connection
        finally:
            if not answered:
                gemini._depart(record, None)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.payload)
        self.wfile.flush()


def _is_structured(body: Any) -> bool:
    """A generateContent asking for JSON of a schema (structured output)."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    if not isinstance(config, dict) or config.get("responseMimeType") != "application/json":
        return False
    return "responseSchema" in config or "responseJsonSchema" in config


JUDGE_THOUGHTS_TOKENS = 120  # a structured answer's thinking tokens (billed as output, like Gemini 3's)


def _request_text(body: dict[str, Any]) -> str:
    return " ".join(part.get("text", "") for content in body.get("contents", []) for part in content.get("parts", []))


def _structured_reply(body: dict[str, Any]) -> Reply:
    """The default answer to a structured request: JSON of its schema, shaped by the markers in its text."""
    text = _request_text(body)
    marker = _QJUDGE.search(text)
    if marker is not None and marker.group(1) == "500":
        return internal_error_reply()
    if marker is not None and marker.group(1) == "safety":
        return blocked_reply("SAFETY")
    if marker is not None and marker.group(1) == "garbage":
        return text_reply("Sure! The portrait looks great {score: ninety")
    config = body["generationConfig"]
    schema = config.get("responseSchema") or config.get("responseJsonSchema") or {}
    answer = _conforming(schema, text, set(_QFAIL.findall(text)))
    reply = text_reply(json.dumps(answer))
    assert reply.body is not None
    reply.body["usageMetadata"]["thoughtsTokenCount"] = JUDGE_THOUGHTS_TOKENS
    return reply


def _conforming(schema: dict[str, Any], text: str, failing: set[str], name: str = "") -> Any:
    """A value of `schema` (the API's Schema, or JSON Schema): what constrained decoding would allow."""
    kind = str(schema.get("type", "")).upper()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "OBJECT":
        properties: dict[str, Any] = schema.get("properties", {})
        order = schema.get("propertyOrdering") or list(properties)
        required = set(schema.get("required", properties))
        return {key: _conforming(properties[key], text, failing, key) for key in order if key in required}
    if kind == "ARRAY":
        items: dict[str, Any] = schema.get("items", {})
        names = items.get("properties", {}).get("name", {}).get("enum")
        if not names:
            return [_conforming(items, text, failing)]
        asked = [value for value in names if value in text] or names
        return [_criterion(items, value, text, failing) for value in asked]
    if kind == "BOOLEAN":
        return True
    if kind in ("INTEGER", "NUMBER"):
        low, high = float(schema.get("minimum", 0)), float(schema.get("maximum", 100))
        share = 0.4 if failing and name == "score" else 0.95
        value = low + (high - low) * share
        return round(value) if kind == "INTEGER" else value
    return "looks fine"


def _criterion(items: dict[str, Any], value: str, text: str, failing: set[str]) -> dict[str, Any]:
    item = _conforming(items, text, failing)
    item["name"] = value
    for key, prop in items.get("properties", {}).items():
        if str(prop.get("type", "")).upper() == "BOOLEAN":
            item[key] = value not in failing
    if value in failing and "reason" in item:
        item["reason"] = "QFAIL marker"
    return item


def _prompt_tokens(request_body: dict[str, Any]) -> int:
    """A rough count: 4 characters a token for text, 258 tokens an inline image (Gemini's rate)."""
    contents = [*request_body.get("contents", []), request_body.get("systemInstruction") or {}]
    parts = [part for content in contents for part in content.get("parts", [])]
    return sum(258 if "inlineData" in part else len(part.get("text", "")) // 4 + 1 for part in parts)


def _header(record: RecordedRequest, name: str) -> str | None:
    """A request header, whatever its case."""
    wanted = name.lower()
    return next((value for key, value in record.headers.items() if key.lower() == wanted), None)


def _jsonl_item(line: str, number: int) -> tuple[str, Any, None]:
    """One line of a batch input file: ``{"key": ..., "request": GenerateContentRequest}``."""
    try:
        item = json.loads(line)
    except ValueError:
        return f"line-{number}", None, None
    if not isinstance(item, dict):
        return f"line-{number}", None, None
    return str(item.get("key", f"line-{number}")), item.get("request"), None


def _resource_id() -> str:
    """A resource id like the API's: lowercase letters and digits."""
    return uuid.uuid4().hex[:16]


def _now() -> str:
    return _rfc3339(datetime.datetime.now(datetime.UTC))


def _rfc3339(moment: datetime.datetime) -> str:
    """A google.protobuf.Timestamp in JSON form: "2025-07-01T12:00:00.123456Z"."""
    return moment.isoformat().replace("+00:00", "Z")


def _invalid_key_reply() -> Reply:
    return error_reply(
        400,
        "API key not valid. Please pass a valid API key.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ],
    )
