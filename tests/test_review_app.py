"""The review web app on a real uvicorn server on 127.0.0.1: token, CSRF, approve and reject through forms."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
import uvicorn

from portrait_pipeline.audit.models import APPROVED, PENDING, REJECTED, PlayerImageAsset
from portrait_pipeline.cli.review_app import COOKIE, check_bind, create_app
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
from portrait_pipeline.errors import ConfigurationError
from tests.test_quality_check import score
from tests.test_review import assets_of, generate, live, serving_of

TOKEN = "desk-token-for-tests"


@pytest.fixture
def desk(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> Iterator[str]:
    """Player 1 with a live image and a pending one, player 2 with a pending one; the app serving them."""
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=False, extra={"image_size": "512"})
    generate(roster_loaded, storage_resource, offline_gemini, [1, 2], review=True)
    with served(roster_loaded, storage_resource) as base:
        yield base


@contextmanager
def served(database: DatabaseResource, storage: ImageStorageResource) -> Iterator[str]:
    """The desk on a real server on 127.0.0.1 (a free port), for the time of the block."""
    app = create_app(database.check(), storage.get_storage(), TOKEN, "art-director")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def csrf_of(page: str) -> str:
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


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


@pytest.fixture
def scored_desk(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> Iterator[str]:
    """Pending images of players 1-3 scored by the judge (2's could not be), and player 1 again under the prompt
    variant `bold` (an experiment): the desk serving them."""
    generate(roster_loaded, storage_resource, offline_gemini, [1, 2, 3], review=True)
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=True)
    with roster_loaded.session() as db:
        bold = db.get_one(PlayerImageAsset, assets_of(roster_loaded, 1)[1].id)
        bold.prompt_variant = bold.snapshot.prompt_variant = "bold"
        db.commit()
    (first, bold), (second,), (third,) = (assets_of(roster_loaded, player_id) for player_id in (1, 2, 3))
    score(roster_loaded, first.id, 55, {"no_text": "letters on the jersey"})
    score(roster_loaded, bold.id, 90)
    score(roster_loaded, second.id, None, {"reason": "judge error: HTTP 503"})
    score(roster_loaded, third.id, 72)
    with served(roster_loaded, storage_resource) as base:
        yield base


def cards_of(page: str) -> dict[int, str]:
    """Asset id → the HTML of its card on the grid, in page order."""
    cards = page.split('<div class="card" ')[1:]
    return {int(card.split('data-asset="', 1)[1].split('"', 1)[0]): card for card in cards}


def test_the_grid_shows_scores_unscored_first_then_lowest_score_first(
    scored_desk: str, roster_loaded: DatabaseResource
) -> None:
    (first, bold), (second,), (third,) = (assets_of(roster_loaded, player_id) for player_id in (1, 2, 3))
    session = logged_in(scored_desk)
    cards = cards_of(session.get(f"{scored_desk}/", timeout=5).text)
    assert list(cards) == [second.id, first.id, third.id, bold.id]
    assert "not scored: judge error: HTTP 503" in cards[second.id]
    assert "score 55 (fails)" in cards[first.id] and "<li>no_text: letters on the jersey</li>" in cards[first.id]
    assert 'title="no_text: letters on the jersey&#10;"' in cards[first.id]  # on hover too
    assert "score 72 (passes)" in cards[third.id] and "<li>" not in cards[third.id]


def test_a_player_under_two_prompt_variants_is_shown_side_by_side(
    scored_desk: str, roster_loaded: DatabaseResource
) -> None:
    (first, bold), (second,), _ = (assets_of(roster_loaded, player_id) for player_id in (1, 2, 3))
    session = logged_in(scored_desk)
    page = session.get(f"{scored_desk}/", timeout=5).text
    cards = cards_of(page)
    for card in (cards[first.id], cards[bold.id]):
        variants = re.findall(r'data-variant="([a-z]+)".*?review: ([a-z]+).*?score ([0-9]+)', card, re.S)
        assert variants == [("bold", PENDING, "90"), ("default", PENDING, "55")]
    assert "data-variant" not in cards[second.id]  # one variant: nothing to compare

    response = session.post(f"{scored_desk}/approve/{bold.id}", data={"csrf": csrf_of(page)}, timeout=5)
    assert response.status_code == 200 and assets_of(roster_loaded, 1)[1].review_status == APPROVED
    history = session.get(f"{scored_desk}/player/1", timeout=5).text
    assert "Prompt variants, default" in history
    variants = re.findall(r'data-variant="([a-z]+)".*?review: ([a-z]+)', history, re.S)
    assert variants == [("bold", APPROVED), ("default", PENDING)]
    # An experiment's (trial) image is approved for the report only: it never goes live.
    assert f"{bold.id} (live)" not in history and "score 90" in history and "letters on the jersey" in history
