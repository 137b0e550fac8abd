"""The review web app on a real uvicorn server on 127.0.0.1: token, CSRF, approve and reject through forms."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
import uvicorn

from portrait_pipeline.audit.models import APPROVED, PENDING, REJECTED
from portrait_pipeline.cli.review_app import COOKIE, check_bind, create_app
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
from portrait_pipeline.errors import ConfigurationError
from tests.test_review import assets_of, generate, live, serving_of

TOKEN = "desk-token-for-tests"


@pytest.fixture
def desk(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> Iterator[str]:
    """Player 1 with a live image and a pending one, player 2 with a pending one; the app serving them."""
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=False, extra={"image_size": "512"})
    generate(roster_loaded, storage_resource, offline_gemini, [1, 2], review=True)
    app = create_app(roster_loaded.check(), storage_resource.get_storage(), TOKEN, "art-director")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def logged_in(base: str) -> requests.Session:
    session = requests.Session()
    response = session.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False)
    assert response.status_code == 303 and COOKIE in response.cookies
    assert TOKEN not in response.headers["set-cookie"]  # the cookie is derived from the token, never the token
    return session


def test_without_the_token_every_route_answers_401(desk: str, roster_loaded: DatabaseResource) -> None:
    pending = assets_of(roster_loaded, 1)[1].id
    for method, path in [
        ("GET", "/"),
        ("GET", "/player/1"),
        ("GET", f"/image/{pending}"),
        ("POST", f"/approve/{pending}"),
        ("POST", f"/reject/{pending}"),
        ("POST", f"/promote/{pending}"),
    ]:
        assert requests.request(method, f"{desk}{path}", timeout=5).status_code == 401, path
        forged_cookie = {COOKIE: "0" * 64}
        assert requests.request(method, f"{desk}{path}", cookies=forged_cookie, timeout=5).status_code == 401
    wrong = requests.post(f"{desk}/login", data={"token": "guess"}, allow_redirects=False, timeout=5)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies


def test_a_forged_post_without_the_csrf_token_changes_nothing(
    desk: str, roster_loaded: DatabaseResource, storage_resource: ImageStorageResource
) -> None:
    old, pending = assets_of(roster_loaded, 1)
    session = logged_in(desk)
    for data in ({}, {"csrf": "forged"}):
        assert session.post(f"{desk}/approve/{pending.id}", data=data, timeout=5).status_code == 403
        response = session.post(f"{desk}/reject/{pending.id}", data={**data, "reason": "x"}, timeout=5)
        assert response.status_code == 403
    assert [a.review_status for a in assets_of(roster_loaded, 1)] == [APPROVED, PENDING]
    assert live(roster_loaded, storage_resource, 1) == serving_of(old)


def test_the_grid_approves_one_and_rejects_one_with_guidance(
    desk: str, roster_loaded: DatabaseResource, storage_resource: ImageStorageResource
) -> None:
    old, pending = assets_of(roster_loaded, 1)
    (other,) = assets_of(roster_loaded, 2)
    session = logged_in(desk)
    grid = session.get(f"{desk}/", timeout=5)
    assert grid.status_code == 200
    page = grid.text
    assert 'id="2025|default"' in page and f'data-asset="{pending.id}"' in page and f'data-asset="{other.id}"' in page
    assert f"live: asset {old.id}" in page and "no live image" in page  # the previous approved image beside it
    assert "Nothing is waiting." in session.get(f"{desk}/", params={"partition": "2026|default"}, timeout=5).text
    assert f'data-asset="{pending.id}"' in session.get(f"{desk}/", params={"partition": "2025|default"}).text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    image = session.get(f"{desk}/image/{old.id}", timeout=5)
    assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")

    assert session.post(f"{desk}/approve/{pending.id}", data={"csrf": csrf}, timeout=5).status_code == 200
    form = {"csrf": csrf, "reason": "hair too long", "guidance": "shorter hair"}
    assert session.post(f"{desk}/reject/{other.id}", data=form, timeout=5).status_code == 200
    approved = assets_of(roster_loaded, 1)[1]
    assert (approved.review_status, approved.reviewed_by) == (APPROVED, "art-director")
    assert live(roster_loaded, storage_resource, 1) == serving_of(approved)
    (rejected,) = assets_of(roster_loaded, 2)
    assert (rejected.review_status, rejected.guidance) == (REJECTED, "shorter hair")
    history = session.get(f"{desk}/player/1", timeout=5).text
    assert f"{approved.id} (live)" in history and f'action="/promote/{old.id}"' in history
    assert "Nothing is waiting." in session.get(f"{desk}/", timeout=5).text


def test_serve_refuses_a_network_address_without_a_token() -> None:
    with pytest.raises(ConfigurationError, match=r"--host 0\.0\.0\.0: set REVIEW_TOKEN"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "a-token")


def test_after_a_form_the_desk_returns_to_its_own_page_never_another_site(
    desk: str, roster_loaded: DatabaseResource
) -> None:
    _, pending = assets_of(roster_loaded, 1)
    session = logged_in(desk)
    csrf = session.get(f"{desk}/", timeout=5).text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    response = session.post(
        f"{desk}/approve/{pending.id}",
        data={"csrf": csrf},
        headers={"Referer": "https://evil.example/?partition=2025%7Cdefault"},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 303 and response.headers["location"] == "/?partition=2025%7Cdefault"
