"""The local Gemini server's Batch and Files APIs, driven by the real google-genai SDK."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import _api_client, errors, types

from tests.servers import gemini

IMAGE_MODEL = "gemini-2.5-flash-image"
TEXT_MODEL = "gemini-2.5-flash"
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@pytest.fixture
def server() -> Iterator[gemini.GeminiTestServer]:
    with gemini.GeminiTestServer(models=[IMAGE_MODEL, TEXT_MODEL], api_key="test-key") as running:
        yield running


def make_client(server: gemini.GeminiTestServer) -> genai.Client:
    """The real SDK on the Batch API's version; keep the client in a variable (see test_gemini_server)."""
    options = types.HttpOptions(base_url=server.base_url, api_version="v1beta")
    return genai.Client(api_key="test-key", http_options=options)


def inline_request(key: str, prompt: str = "Portrait of #23.") -> types.InlinedRequest:
    """One GenerateContentRequest of an inline batch, keyed by its metadata (echoed in its response)."""
    return types.InlinedRequest(contents=prompt, metadata={"key": key})


def jsonl(*keys: str, prompt: str = "Portrait of #23.") -> bytes:
    lines = [{"key": key, "request": {"contents": [{"parts": [{"text": prompt}], "role": "user"}]}} for key in keys]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_until_done(client: genai.Client, name: str, timeout_s: float = 5.0) -> tuple[types.BatchJob, list[str]]:
    """Poll like a batch lane would; returns the ended job and the distinct states seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.batches.get(name=name)
        state = job.state.name if job.state else "?"
        if not seen or seen[-1] != state:
            seen.append(state)
        if job.done or time.monotonic() > deadline:
            return job, seen
        time.sleep(0.03)


def has_image(response: types.GenerateContentResponse | None) -> bool:
    content = response.candidates[0].content if response and response.candidates else None
    return any(part.inline_data for part in (content.parts or [])) if content else False


def test_inline_batch_goes_pending_running_succeeded_with_images() -> None:
    with gemini.GeminiTestServer(models=[IMAGE_MODEL], batch_pending_s=0.3, batch_running_s=0.3) as server:
        client = make_client(server)
        job = client.batches.create(
            model=IMAGE_MODEL,
            src=[inline_request("player-1"), inline_request("player-2")],
            config={"display_name": "portraits"},
        )
        assert job.name and job.name.startswith("batches/") and job.name == server.batch_names[0]
        assert (job.state, job.display_name, job.model) == ("JOB_STATE_PENDING", "portraits", f"models/{IMAGE_MODEL}")
        assert job.dest is None and not job.done

        done, seen = wait_until_done(client, job.name)

        assert seen == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
        assert done.end_time is not None and done.create_time is not None and done.end_time >= done.create_time
        assert done.dest is not None and done.dest.inlined_responses is not None
        assert [r.metadata for r in done.dest.inlined_responses] == [{"key": "player-1"}, {"key": "player-2"}]
        assert all(has_image(r.response) and r.error is None for r in done.dest.inlined_responses)
        counts = server.batch_request_counts
        assert counts["create"] == 1 and counts["get"] == len(server.requests) - 1 >= 3
        assert server.request_counts["generate_content"] == 0  # a batch does not go through generateContent
        create = server.requests[0]
        assert (create.kind, create.path, create.model) == (
            "batch_create",
            f"/v1beta/models/{IMAGE_MODEL}:batchGenerateContent",
            IMAGE_MODEL,
        )
        assert create.body["batch"]["inputConfig"]["requests"]["requests"][0] == {
            "request": {"contents": [{"parts": [{"text": "Portrait of #23."}], "role": "user"}]},
            "metadata": {"key": "player-1"},
        }


def test_file_batch_results_are_a_downloadable_jsonl(server: gemini.GeminiTestServer) -> None:
    client = make_client(server)
    server.script_batch("player-2", gemini.error_reply(400, "Request contains an invalid argument."))

    uploaded = client.files.upload(
        file=io.BytesIO(jsonl("player-1", "player-2", "player-3")),
        config=types.UploadFileConfig(mime_type="jsonl", display_name="portrait-requests"),
    )
    assert uploaded.name and uploaded.name.startswith("files/") and uploaded.display_name == "portrait-requests"
    assert (uploaded.mime_type, uploaded.size_bytes, uploaded.source) == (
        "jsonl",
        len(jsonl("player-1", "player-2", "player-3")),
        types.FileSource.UPLOADED,
    )
    assert client.files.get(name=uploaded.name).size_bytes == uploaded.size_bytes

    job = client.batches.create(model=IMAGE_MODEL, src=uploaded.name)
    done, _ = wait_until_done(client, job.name or "")
    assert done.state == "JOB_STATE_SUCCEEDED" and done.dest is not None
    assert done.dest.file_name and done.dest.file_name.startswith("files/") and not done.dest.inlined_responses

    lines = [json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]

    assert [line["key"] for line in lines] == ["player-1", "player-2", "player-3"]  # input order
    assert lines[1] == {"key": "player-2", "error": {"code": 400, "message": "Request contains an invalid argument."}}
    for line in (lines[0], lines[2]):
        response = types.GenerateContentResponse.model_validate(line["response"])
        assert has_image(response) and response.model_version == IMAGE_MODEL
    results = client.files.get(name=done.dest.file_name)
    assert results.source == types.FileSource.GENERATED and results.download_uri

    with pytest.raises(errors.ClientError) as caught:
        client.files.download(file=uploaded.name)  # uploaded files cannot be downloaded
    assert caught.value.code == 400
    counts = server.batch_request_counts
    assert (counts["upload"], counts["create"], counts["download"]) == (1, 1, 2)
    assert server.request_counts["upload_chunk"] == 1


def test_a_big_upload_goes_in_chunks(server: gemini.GeminiTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_api_client, "CHUNK_SIZE", 100)  # the SDK's 8 MB, shrunk
    data = jsonl(*(f"player-{i}" for i in range(5)))
    client = make_client(server)

    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})

    assert uploaded.size_bytes == len(data) > 300
    chunks = [r for r in server.requests if r.kind == "upload_chunk"]
    assert [r.headers["X-Goog-Upload-Offset"] for r in chunks] == [str(i) for i in range(0, len(data), 100)]
    assert chunks[-1].headers["X-Goog-Upload-Command"] == "upload, finalize"
    assert server.batch_request_counts["upload"] == 1
    job = client.batches.create(model=TEXT_MODEL, src=uploaded.name or "")
    done, _ = wait_until_done(client, job.name or "")
    assert done.dest is not None and done.dest.file_name
    assert len(client.files.download(file=done.dest.file_name).splitlines()) == 5


def test_scripted_answers_per_request_key(server: gemini.GeminiTestServer) -> None:
    server.script_batch("player-2", gemini.internal_error_reply())
    server.script_batch("player-3", gemini.safety_reply())
    server.script_batch("player-4", gemini.text_reply("I can't draw real people."))
    client = make_client(server)

    job = client.batches.create(model=IMAGE_MODEL, src=[inline_request(f"player-{i}") for i in range(1, 5)])
    done, _ = wait_until_done(client, job.name or "")

    assert done.dest is not None and done.dest.inlined_responses is not None
    ok, failed, unsafe, words = done.dest.inlined_responses
    assert has_image(ok.response) and ok.error is None
    assert failed.response is None and failed.error is not None
    assert (failed.error.code, failed.metadata) == (500, {"key": "player-2"})
    assert unsafe.response and unsafe.response.candidates
    assert unsafe.response.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY
    assert words.response and words.response.text == "I can't draw real people." and not has_image(words.response)

    # A script answers one job: the same key in the next job gets the default answer.
    next_job = client.batches.create(model=IMAGE_MODEL, src=[inline_request("player-2")])
    again, _ = wait_until_done(client, next_job.name or "")
    assert again.dest and again.dest.inlined_responses and has_image(again.dest.inlined_responses[0].response)


@pytest.mark.parametrize("state", ["JOB_STATE_EXPIRED", "JOB_STATE_FAILED", "BATCH_STATE_CANCELLED"])
def test_forced_terminal_states(state: str) -> None:
    with gemini.GeminiTestServer(batch_pending_s=60) as server:
        client = make_client(server)
        job = client.batches.create(model=IMAGE_MODEL, src=[inline_request("player-1")])
        assert client.batches.get(name=job.name or "").state == "JOB_STATE_PENDING"

        server.force_batch_state(job.name or "", state)

        ended = client.batches.get(name=job.name or "")
        assert ended.state == state.replace("BATCH_", "JOB_") and ended.done
        assert ended.dest is None and ended.end_time is not None
        with pytest.raises(ValueError):
            server.force_batch_state(job.name or "", "JOB_STATE_PAUSED")


def test_cancel_a_running_job(server: gemini.GeminiTestServer) -> None:
    server.batch_running_s = 60
    client = make_client(server)
    job = client.batches.create(model=TEXT_MODEL, src=[inline_request("player-1")])
    time.sleep(server.batch_pending_s)
    assert client.batches.get(name=job.name or "").state == "JOB_STATE_RUNNING"

    client.batches.cancel(name=job.name or "")

    cancelled = client.batches.get(name=job.name or "")
    assert cancelled.state == "JOB_STATE_CANCELLED" and cancelled.done and cancelled.dest is None
    with pytest.raises(errors.ClientError) as caught:
        client.batches.cancel(name=job.name or "")  # it has ended
    assert (caught.value.code, caught.value.status) == (400, "FAILED_PRECONDITION")
    with pytest.raises(errors.ClientError) as caught:
        client.batches.get(name="batches/no-such-job")
    assert caught.value.code == 404
    assert server.batch_request_counts == {"create": 1, "get": 3, "cancel": 2}


def test_list_batches_page_by_page(server: gemini.GeminiTestServer) -> None:
    client = make_client(server)
    names = [client.batches.create(model=TEXT_MODEL, src=[inline_request(str(i))]).name for i in range(3)]

    assert [job.name for job in client.batches.list()] == names == server.batch_names
    assert [job.name for job in client.batches.list(config={"page_size": 2})] == names
    assert server.batch_request_counts["list"] == 1 + 2  # one page, then two pages of two
    assert {job.state for job in client.batches.list()} <= {"JOB_STATE_PENDING", "JOB_STATE_RUNNING"} | ENDED


@pytest.mark.parametrize("retired", [False, True])
def test_batch_create_with_an_unknown_model_is_404(server: gemini.GeminiTestServer, retired: bool) -> None:
    client = make_client(server)
    model = IMAGE_MODEL if retired else "gemini-1.0-pro-vision"
    if retired:
        server.remove_model(IMAGE_MODEL)

    with pytest.raises(errors.ClientError) as caught:
        client.batches.create(model=model, src=[inline_request("player-1")])

    assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND")
    assert caught.value.message == (
        f"models/{model} is not found for API version v1beta, or is not supported for batchGenerateContent. "
        "Call ListModels to see the list of available models and their supported methods."
    )
    assert server.batch_names == []


def test_inline_requests_are_capped_files_are_not() -> None:
    assert gemini.BATCH_INLINE_LIMIT_BYTES == 20 * 1024 * 1024  # the Batch API's documented 20 MB
    with gemini.GeminiTestServer(batch_inline_limit_bytes=2_000) as server:
        client = make_client(server)
        big = [inline_request(f"player-{i}", prompt="x" * 500) for i in range(4)]

        with pytest.raises(errors.ClientError) as caught:
            client.batches.create(model=TEXT_MODEL, src=big)
        assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
        assert "2000 bytes" in (caught.value.message or "")

        uploaded = client.files.upload(
            file=io.BytesIO(jsonl(*(f"player-{i}" for i in range(4)), prompt="x" * 500)), config={"mime_type": "jsonl"}
        )
        job = client.batches.create(model=TEXT_MODEL, src=uploaded.name or "")
        assert job.state == "JOB_STATE_PENDING" and server.batch_names == [job.name]


def test_batch_and_files_check_the_api_key() -> None:
    with gemini.GeminiTestServer(api_key="right-key") as server:
        client = make_client(server)  # sends "test-key"
        calls: list[Any] = [
            lambda: client.batches.create(model=TEXT_MODEL, src=[inline_request("1")]),
            lambda: list(client.batches.list()),
            lambda: client.files.upload(file=io.BytesIO(b"{}\n"), config={"mime_type": "jsonl"}),
        ]
        for call in calls:
            with pytest.raises(errors.ClientError) as caught:
                call()
            assert caught.value.code == 400
        assert [r.kind for r in server.requests] == ["batch_create", "batch_list", "upload"]


def test_async_client_creates_and_polls() -> None:
    import asyncio

    async def run(server: gemini.GeminiTestServer) -> types.BatchJob:
        async with make_client(server).aio as client:
            job = await client.batches.create(model=IMAGE_MODEL, src=[inline_request("player-1")])
            while not (job := await client.batches.get(name=job.name or "")).done:
                await asyncio.sleep(0.03)
            return job

    with gemini.GeminiTestServer() as server:
        job = asyncio.run(run(server))
        assert job.state == "JOB_STATE_SUCCEEDED" and job.dest and job.dest.inlined_responses
        assert has_image(job.dest.inlined_responses[0].response)
