"""The local Gemini server, driven by the real google-genai SDK (sync and async clients)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from tests.servers import gemini

IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"
PORTRAIT_CONFIG = types.GenerateContentConfig(
    system_instruction="You paint basketball portraits.",
    response_modalities=["IMAGE"],
    image_config=types.ImageConfig(aspect_ratio="4:5", image_size="1K"),
)


@pytest.fixture
def server() -> Iterator[gemini.GeminiTestServer]:
    with gemini.GeminiTestServer() as running:
        yield running


def make_client(server: gemini.GeminiTestServer, **http_options: Any) -> genai.Client:
    """The real SDK pointed at the server; no retries unless retry_options is passed.

    Keep the returned client in a variable: ``genai.Client.__del__`` closes its sync HTTP client, so
    ``make_client(server).models.generate_content(...)`` fails with "client has been closed".
    """
    options = types.HttpOptions(base_url=server.base_url, **http_options)
    return genai.Client(api_key="test-key", http_options=options)


def image_parts(response: types.GenerateContentResponse) -> list[types.Part]:
    content = response.candidates[0].content if response.candidates else None
    return [part for part in (content.parts or []) if part.inline_data] if content else []


def test_image_request_round_trip(server: gemini.GeminiTestServer) -> None:
    client = make_client(server)
    response = client.models.generate_content(
        model=IMAGE_MODEL, contents="Portrait of #23, home jersey.", config=PORTRAIT_CONFIG
    )

    [part] = image_parts(response)
    assert part.inline_data is not None and part.inline_data.mime_type == "image/png"
    image = Image.open(io.BytesIO(part.inline_data.data or b""))
    assert image.format == "PNG" and image.size == gemini.DEFAULT_IMAGE_SIZE == (896, 1152)
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == IMAGE_MODEL
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_token_count == gemini.IMAGE_TOKENS
    assert usage.total_token_count == (usage.prompt_token_count or 0) + gemini.IMAGE_TOKENS

    [request] = server.requests
    assert (request.method, request.path, request.api_version) == (
        "POST",
        f"/v1/models/{IMAGE_MODEL}:generateContent",
        "v1",
    )
    assert request.model == IMAGE_MODEL and request.status == 200 and not request.scripted
    assert request.api_key == "test-key"  # the x-goog-api-key header
    assert request.headers["user-agent"].startswith("google-genai-sdk/")
    assert request.body == {
        "contents": [{"parts": [{"text": "Portrait of #23, home jersey."}], "role": "user"}],
        "systemInstruction": {"parts": [{"text": "You paint basketball portraits."}], "role": "user"},
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "4:5", "imageSize": "1K"},
        },
    }


def test_text_model_gets_a_description_and_v1beta_is_served(server: gemini.GeminiTestServer) -> None:
    client = make_client(server, api_version="v1beta")
    response = client.models.generate_content(model=TEXT_MODEL, contents="Describe the player.")

    assert response.text == gemini.DEFAULT_DESCRIPTION
    assert not image_parts(response)
    assert server.requests[0].path == f"/v1beta/models/{TEXT_MODEL}:generateContent"


def test_429_is_a_client_error_with_retry_info_in_details(server: gemini.GeminiTestServer) -> None:
    server.enqueue(gemini.rate_limited_reply(retry_delay_s=7))

    client = make_client(server)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=IMAGE_MODEL, contents="x")

    error = caught.value
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    # .details is the whole JSON body, so RetryInfo sits under details["error"]["details"].
    assert error.details["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}
    ]
    assert len(server.requests) == 1  # no retry without HttpOptions.retry_options
    assert server.count_429 == 0  # only the rate limiter's 429s are counted


@pytest.mark.parametrize(
    ("reply", "code", "status"),
    [(gemini.internal_error_reply(), 500, "INTERNAL"), (gemini.unavailable_reply(), 503, "UNAVAILABLE")],
)
def test_5xx_is_a_server_error_and_not_retried_by_default(
    server: gemini.GeminiTestServer, reply: gemini.Reply, code: int, status: str
) -> None:
    server.enqueue(reply, reply)

    client = make_client(server)
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=IMAGE_MODEL, contents="x")

    assert (caught.value.code, caught.value.status) == (code, status)
    assert [r.status for r in server.requests] == [code]


@pytest.mark.parametrize(
    ("reply", "finish_reason", "block_reason"),
    [
        (gemini.safety_reply(), types.FinishReason.IMAGE_SAFETY, None),
        (gemini.safety_reply("SAFETY"), types.FinishReason.SAFETY, None),
        (gemini.blocked_reply(), None, types.BlockedReason.SAFETY),
        (gemini.text_reply("I can't draw real people."), types.FinishReason.STOP, None),
    ],
)
def test_answers_without_an_image(
    server: gemini.GeminiTestServer,
    reply: gemini.Reply,
    finish_reason: types.FinishReason | None,
    block_reason: types.BlockedReason | None,
) -> None:
    server.enqueue(reply)

    client = make_client(server)
    response = client.models.generate_content(model=IMAGE_MODEL, contents="x", config=PORTRAIT_CONFIG)

    assert not image_parts(response)
    assert (response.candidates[0].finish_reason if response.candidates else None) == finish_reason
    assert (response.prompt_feedback.block_reason if response.prompt_feedback else None) == block_reason
    assert server.requests[0].scripted


def test_peak_in_flight_counts_concurrent_async_calls() -> None:
    async def burst(server: gemini.GeminiTestServer) -> list[types.GenerateContentResponse]:
        async with make_client(server).aio as client:
            calls = [client.models.generate_content(model=IMAGE_MODEL, contents=str(i)) for i in range(5)]
            return await asyncio.gather(*calls)

    with gemini.GeminiTestServer(latency_s=0.3) as server:
        started = time.monotonic()
        responses = asyncio.run(burst(server))
        elapsed = time.monotonic() - started

        assert all(len(image_parts(response)) == 1 for response in responses)
        assert server.peak_in_flight == 5 and server.in_flight == 0
        assert elapsed < 1.2  # concurrent, not 5 x 0.3 s
        assert all((r.duration_s or 0) >= 0.3 for r in server.requests)


def test_rate_limit_answers_a_burst_with_429s() -> None:
    async def burst(server: gemini.GeminiTestServer) -> list[Any]:
        async with make_client(server).aio as client:
            calls = [client.models.generate_content(model=IMAGE_MODEL, contents=str(i)) for i in range(6)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with gemini.GeminiTestServer(requests_per_second=2) as server:
        results = asyncio.run(burst(server))

        rejected = [r for r in results if isinstance(r, errors.ClientError)]
        assert {r.code for r in rejected} == {429}
        assert 3 <= len(rejected) <= 4  # a bucket of 2, plus at most one refill during the burst
        assert len(rejected) + sum(isinstance(r, types.GenerateContentResponse) for r in results) == 6
        assert server.count_429 == len(rejected)
        retry_info = rejected[0].details["error"]["details"][0]
        assert retry_info["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        assert retry_info["retryDelay"].endswith("s") and float(retry_info["retryDelay"][:-1]) <= 0.5

        server.reset()  # refills the bucket
        client = make_client(server)
        client.models.generate_content(model=IMAGE_MODEL, contents="again")
        assert server.count_429 == 0 and [r.status for r in server.requests] == [200]


def test_failure_rate_is_seeded() -> None:
    def statuses(server: gemini.GeminiTestServer) -> list[int]:
        client = make_client(server)
        for i in range(12):
            with contextlib.suppress(errors.ServerError):
                client.models.generate_content(model=TEXT_MODEL, contents=str(i))
        return [r.status or 0 for r in server.requests]

    with gemini.GeminiTestServer(failure_rate=0.5, seed=3) as server:
        first = statuses(server)
        server.reset()
        assert statuses(server) == first and set(first) == {200, 500}


def test_sdk_retries_only_when_asked_and_ignores_retry_delay(server: gemini.GeminiTestServer) -> None:
    server.enqueue(gemini.rate_limited_reply(retry_delay_s=30), gemini.unavailable_reply())
    fast_retries = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.05, jitter=0)
    client = make_client(server, retry_options=fast_retries)

    started = time.monotonic()
    response = client.models.generate_content(model=TEXT_MODEL, contents="x")

    assert response.text == gemini.DEFAULT_DESCRIPTION
    assert [r.status for r in server.requests] == [429, 503, 200]
    assert time.monotonic() - started < 2  # retryDelay "30s" was not honoured


def test_per_request_retry_options_override_the_clients(server: gemini.GeminiTestServer) -> None:
    server.enqueue(gemini.internal_error_reply())
    retry_once = types.HttpRetryOptions(attempts=2, initial_delay=0.01, jitter=0)

    client = make_client(server)
    config = types.GenerateContentConfig(http_options=types.HttpOptions(retry_options=retry_once))
    response = client.models.generate_content(model=TEXT_MODEL, contents="x", config=config)

    assert response.text and [r.status for r in server.requests] == [500, 200]


def test_client_timeout_on_a_hanging_reply(server: gemini.GeminiTestServer) -> None:
    server.enqueue(gemini.hang_reply(), gemini.hang_reply())
    client = make_client(server, timeout=200)  # milliseconds

    started = time.monotonic()
    with pytest.raises(httpx2.TimeoutException):
        client.models.generate_content(model=TEXT_MODEL, contents="x")
    assert time.monotonic() - started < 1

    async def call_async() -> None:
        async with client.aio as aclient:
            await aclient.models.generate_content(model=TEXT_MODEL, contents="x")

    with pytest.raises(httpx2.TimeoutException):
        asyncio.run(call_async())
    # The SDK tells the server its deadline, rounded up to whole seconds.
    assert [r.headers.get("X-Server-Timeout") for r in server.requests] == ["1", "1"]
    assert [r.status for r in server.requests] == [None, None]  # still hanging until stop()


def test_slow_reply_delays_the_default_answer(server: gemini.GeminiTestServer) -> None:
    server.enqueue(gemini.slow_reply(0.2))

    client = make_client(server)
    response = client.models.generate_content(model=IMAGE_MODEL, contents="x")

    assert len(image_parts(response)) == 1
    assert (server.requests[0].duration_s or 0) >= 0.2


def test_wrong_api_key_and_unknown_method_are_client_errors() -> None:
    with gemini.GeminiTestServer(api_key="right-key") as server:
        client = make_client(server)  # sends "test-key"
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=IMAGE_MODEL, contents="x")
        assert caught.value.code == 400
        assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"

        with pytest.raises(errors.ClientError) as caught:
            client.models.count_tokens(model=TEXT_MODEL, contents="x")
        assert caught.value.code == 404


# --- the model catalogue ------------------------------------------------------------------------

CATALOGUE = [
    gemini.ModelInfo(IMAGE_MODEL, display_name="Nano Banana"),
    gemini.ModelInfo(TEXT_MODEL, display_name="Gemini 2.5 Flash"),
]


@pytest.fixture
def catalogue_server() -> Iterator[gemini.GeminiTestServer]:
    with gemini.GeminiTestServer(models=CATALOGUE, api_key="test-key") as running:
        yield running


def test_models_get_answers_with_the_model_resource(catalogue_server: gemini.GeminiTestServer) -> None:
    client = make_client(catalogue_server, api_version="v1beta")
    model = client.models.get(model=IMAGE_MODEL)

    assert model.name == f"models/{IMAGE_MODEL}" and model.display_name == "Nano Banana"
    assert model.supported_actions == ["generateContent", "countTokens", "batchGenerateContent"]
    assert (model.input_token_limit, model.output_token_limit) == (32_768, 32_768)
    assert model.version and model.temperature == 1 and model.top_k == 64
    assert client.models.get(model=f"models/{TEXT_MODEL}").thinking is True

    [first, second] = catalogue_server.requests
    assert (first.method, first.path, first.kind, first.model) == (
        "GET",
        f"/v1beta/models/{IMAGE_MODEL}",
        "get_model",
        IMAGE_MODEL,
    )
    assert first.api_key == "test-key" and first.status == 200 and second.status == 200


@pytest.mark.parametrize("call", ["get", "generate_content"])
def test_an_unknown_model_is_googles_404(catalogue_server: gemini.GeminiTestServer, call: str) -> None:
    client = make_client(catalogue_server, api_version="v1beta")
    with pytest.raises(errors.ClientError) as caught:
        if call == "get":
            client.models.get(model="gemini-1.0-pro-vision")
        else:
            client.models.generate_content(model="gemini-1.0-pro-vision", contents="x")

    assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND")
    method = "get" if call == "get" else "generateContent"
    assert caught.value.message == (
        f"models/gemini-1.0-pro-vision is not found for API version v1beta, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods."
    )
    assert [r.status for r in catalogue_server.requests] == [404]


def test_models_list_pages_through_the_catalogue(catalogue_server: gemini.GeminiTestServer) -> None:
    client = make_client(catalogue_server)
    assert [m.name for m in client.models.list()] == [f"models/{IMAGE_MODEL}", f"models/{TEXT_MODEL}"]

    catalogue_server.reset()
    paged = list(client.models.list(config={"page_size": 1}))
    assert [m.display_name for m in paged] == ["Nano Banana", "Gemini 2.5 Flash"]
    assert catalogue_server.request_counts == {"list_models": 2}  # one request a page

    with gemini.GeminiTestServer() as anything_goes:  # no catalogue: nothing listed, any id served
        open_client = make_client(anything_goes)
        assert list(open_client.models.list()) == []
        assert open_client.models.get(model="gemini-9-ultra").name == "models/gemini-9-ultra"


def test_a_model_retired_mid_run_answers_404(catalogue_server: gemini.GeminiTestServer) -> None:
    client = make_client(catalogue_server)
    assert image_parts(client.models.generate_content(model=IMAGE_MODEL, contents="x"))

    catalogue_server.remove_model(IMAGE_MODEL)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=IMAGE_MODEL, contents="x")
    assert caught.value.code == 404
    assert [m.name for m in client.models.list()] == [f"models/{TEXT_MODEL}"]

    catalogue_server.add_model(gemini.ModelInfo("portrait-painter", kind="image"))  # kind, not the id, decides
    assert image_parts(client.models.generate_content(model="portrait-painter", contents="x"))
    assert catalogue_server.request_counts == {"generate_content": 3, "list_models": 1}
    assert [r.status for r in catalogue_server.requests] == [200, 404, 200, 200]


def test_the_catalogue_checks_the_api_key_first() -> None:
    with gemini.GeminiTestServer(models=[TEXT_MODEL], api_key="right-key") as server:
        client = make_client(server)  # sends "test-key"
        for call in (lambda: client.models.get(model="unknown"), lambda: list(client.models.list())):
            with pytest.raises(errors.ClientError) as caught:
                call()
            assert caught.value.code == 400
        assert [(r.kind, r.status) for r in server.requests] == [("get_model", 400), ("list_models", 400)]

        with pytest.raises(RuntimeError):
            gemini.GeminiTestServer().remove_model(TEXT_MODEL)  # no catalogue to change


def test_scripted_replies_go_to_the_requests_of_their_kind(catalogue_server: gemini.GeminiTestServer) -> None:
    catalogue_server.enqueue(gemini.unavailable_reply(), gemini.slow_reply(0.2), kind="get_model")
    client = make_client(catalogue_server)

    assert client.models.generate_content(model=TEXT_MODEL, contents="x").text  # not scripted
    with pytest.raises(errors.ServerError):
        client.models.get(model=TEXT_MODEL)
    assert client.models.get(model=TEXT_MODEL).name == f"models/{TEXT_MODEL}"  # the normal answer, late

    assert [(r.kind, r.status, r.scripted) for r in catalogue_server.requests] == [
        ("generate_content", 200, False),
        ("get_model", 503, True),
        ("get_model", 200, True),
    ]
    assert (catalogue_server.requests[2].duration_s or 0) >= 0.2
