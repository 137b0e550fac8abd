"""The review desk in a browser: pending images per partition beside the live one, approve / reject / promote.

Server-side templates (Jinja2) on Starlette, no JavaScript. Every route needs the token (REVIEW_TOKEN, compared
in constant time); every POST also carries a CSRF token derived from it, so a page elsewhere cannot post a form here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jinja2 import DictLoader, Environment, select_autoescape
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from portrait_pipeline import naming
from portrait_pipeline.audit import queries, serving
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.db import session_scope
from portrait_pipeline.audit.models import PENDING, Player, PlayerImageAsset
from portrait_pipeline.errors import ConfigurationError, InvalidInput
from portrait_pipeline.storage import ImageStorage

COOKIE = "review_session"
MAX_FORM_BYTES = 16 * 1024

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Review desk</title>
<style>body{font-family:sans-serif;margin:1em}.card{display:inline-block;vertical-align:top;border:1px solid #ccc;
margin:.5em;padding:.5em;width:520px}figure{margin:0}img{width:240px;height:auto}.pair{display:flex;gap:8px}pre{white-space:pre-wrap;
font-size:11px;max-height:8em;overflow:auto}.error{color:#b00}.fail{color:#b00}.pass{color:#070}
.variants{display:flex;flex-wrap:wrap;gap:8px}.variants img{width:150px}.score{margin:.2em 0}ul.failed{margin:0;
padding-left:1.2em;font-size:12px}</style></head><body>
<p><a href="/">pending</a></p>{% if error %}<p class="error">{{ error }}</p>{% endif %}{% block body %}{% endblock %}
</body></html>"""

_LOGIN = """{% extends "page" %}{% block body %}<h1>Review desk</h1>
<form method="post" action="/login"><label>Token <input type="password" name="token"></label>
<button type="submit">Log in</button></form>{% endblock %}"""

# An image's latest score: the figure and the criteria it failed (under it, and on hover), or why there is none.
_MACROS = """{% macro verdict(q) %}{% if q.score is none %}<p class="score">not scored: {{ q.reason }}</p>
{% else %}<p class="score {{ 'pass' if q.passed else 'fail' }}"
title="{% for c in q.failed %}{{ c.name }}: {{ c.reason }}&#10;{% endfor %}">
score {{ q.score }} ({{ "passes" if q.passed else "fails" }})</p>
{% if q.failed %}<ul class="failed">{% for c in q.failed %}<li>{{ c.name }}: {{ c.reason }}</li>{% endfor %}</ul>
{% endif %}{% endif %}{% endmacro %}
{% macro variants(shown, current=None) %}<div class="variants">{% for v in shown %}
<figure class="variant" data-variant="{{ v.asset.prompt_variant }}"><img src="/image/{{ v.asset.id }}"
alt="variant {{ v.asset.prompt_variant }}"><figcaption><b>{{ v.asset.prompt_variant }}</b> asset {{ v.asset.id }}
{% if v.asset.id == current %}(this image){% endif %}<br>review: {{ v.asset.review_status }}{{ verdict(v.quality) }}
</figcaption></figure>{% endfor %}</div>{% endmacro %}"""

_GRID = """{% extends "page" %}{% from "macros" import verdict, variants %}{% block body %}<h1>Pending review</h1>
<p>Lowest score first; images without a score come before them.</p>
{% for partition, cards in partitions %}<h2 id="{{ partition }}">{{ partition }}</h2>
{% for card in cards %}<div class="card" data-asset="{{ card.asset.id }}">
<b><a href="/player/{{ card.player.id }}">{{ card.player.display_name }}</a></b> asset {{ card.asset.id }}
<div class="pair"><figure><img src="/image/{{ card.asset.id }}" alt="new"><figcaption>new</figcaption></figure>
<figure>{% if card.live %}<img src="/image/{{ card.live.id }}" alt="live">
<figcaption>live: asset {{ card.live.id }}</figcaption>{% else %}<figcaption>no live image</figcaption>
{% endif %}</figure></div>{{ verdict(card.quality) }}
{% if card.variants %}<details open><summary>prompt variants</summary>{{ variants(card.variants, card.asset.id) }}
</details>{% endif %}
{% if card.asset.replaces_asset_id %}<p>corrects rejected asset {{ card.asset.replaces_asset_id }}</p>{% endif %}
<details><summary>prompt</summary><pre>{{ card.asset.user_prompt }}</pre></details>
{% if card.asset.likeness_description %}<details><summary>likeness</summary>
<pre>{{ card.asset.likeness_description }}</pre><p>reference: {{ card.asset.reference_image_url }}</p></details>
{% endif %}
<form method="post" action="/approve/{{ card.asset.id }}"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">Approve</button></form>
<form method="post" action="/reject/{{ card.asset.id }}"><input type="hidden" name="csrf" value="{{ csrf }}">
<input name="reason" placeholder="reason" required> <input name="guidance" placeholder="guidance for the next prompt">
<button type="submit">Reject</button></form></div>{% endfor %}{% else %}<p>Nothing is waiting.</p>{% endfor %}
{% endblock %}"""

_PLAYER = """{% extends "page" %}{% from "macros" import verdict, variants %}{% block body %}
<h1>{{ player.display_name }}</h1>{% for style, shown in compared %}<h2>Prompt variants, {{ style }}</h2>
{{ variants(shown) }}{% endfor %}<table>
<tr><th>asset</th><th>when (UTC)</th><th>style</th><th>variant</th><th>status</th><th>review</th><th>quality</th>
<th></th></tr>
{% for row in rows %}<tr><td>{{ row.id }}{% if row.is_current %} (live){% endif %}</td>
<td>{{ row.created_at.strftime("%Y-%m-%d %H:%M") }}</td><td>{{ row.style }}</td><td>{{ row.prompt_variant }}</td>
<td>{{ row.status }}</td>
<td>{{ row.review_status }}{% if row.review_reason %}: {{ row.review_reason }}{% endif %}</td>
<td>{% if row.status == "succeeded" %}{{ verdict(quality[row.id]) }}{% endif %}</td><td>
{% if row.status == "succeeded" %}<img src="/image/{{ row.id }}" alt="asset {{ row.id }}" style="width:80px">
{% if not row.is_current and row.review_status != "pending" %}<form method="post" action="/promote/{{ row.id }}">
<input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Promote</button></form>{% endif %}
{% endif %}</td></tr>{% endfor %}</table>{% endblock %}"""

_TEMPLATES = Environment(
    loader=DictLoader({"page": _PAGE, "macros": _MACROS, "login": _LOGIN, "grid": _GRID, "player": _PLAYER}),
    autoescape=select_autoescape(default=True, default_for_string=True),
)

Handler = Callable[[Request], Awaitable[Response]]


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token: anyone on the network could approve images."""
    if token:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigurationError(f"review serve --host {host}: set REVIEW_TOKEN to serve beyond this machine")


def create_app(engine: Engine, storage: ImageStorage, token: str, reviewer: str = "review-desk") -> Starlette:
    """The review web app; `token` is the secret every request must prove it knows."""
    if not token:
        raise ConfigurationError("the review desk needs a token (REVIEW_TOKEN)")
    session_value = _derive(token, "session")
    csrf_value = _derive(token, "csrf")

    def authorized(request: Request) -> bool:
        presented = request.cookies.get(COOKIE, "")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            return hmac.compare_digest(bearer[7:].encode(), token.encode())
        return hmac.compare_digest(presented.encode(), session_value.encode())

    def guarded(handler: Handler, post: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not authorized(request):
                return HTMLResponse(_render("login", error="log in with the review token"), status_code=401)
            if post:
                form = await _form(request)
                if not hmac.compare_digest(form.get("csrf", "").encode(), csrf_value.encode()):
                    return HTMLResponse("missing or wrong CSRF token: nothing changed", status_code=403)
                request.state.form = form
            return await handler(request)

        return endpoint

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(_render("login"))
        form = await _form(request)
        if not hmac.compare_digest(form.get("token", "").encode(), token.encode()):
            return HTMLResponse(_render("login", error="wrong token"), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_value, httponly=True, samesite="strict")
        return response

    async def grid(request: Request) -> Response:
        with session_scope(engine) as db:
            queue = queries.review_queue(db, status=PENDING)
            compared = _compared(db, [player for _, player in queue])
            scores = queries.latest_scores(db, [asset.id for asset, _ in queue])
            cards = []
            for asset, player in queue:
                live = queries.current_asset(db, player.id, asset.style)
                partition = naming.partition_label(queries.draft_year_key(player.draft_year), asset.style)
                quality = queries.ImageQuality.of(asset, player, scores.get(asset.id))
                shown = compared.get((player.id, asset.style), [])
                cards.append(Card(partition, asset, player, live, quality, shown))
            wanted = request.query_params.get("partition")  # the link from a Dagster materialization or check
            cards = [card for card in cards if wanted is None or card.partition == wanted]
            partitions = [
                (key, sorted(group, key=lambda card: worst_first(card.quality)))
                for key, group in groupby(cards, key=lambda card: card.partition)
            ]
            return HTMLResponse(_render("grid", partitions=partitions, csrf=csrf_value))

    async def player_page(request: Request) -> Response:
        player_id = int(request.path_params["player_id"])
        with session_scope(engine) as db:
            player = db.get(Player, player_id)
            if player is None:
                return HTMLResponse(_render("page", error=f"player {player_id}: no such player"), status_code=404)
            rows = db.scalars(
                select(PlayerImageAsset).where(PlayerImageAsset.player_id == player_id).order_by(PlayerImageAsset.id)
            ).all()
            scores = queries.latest_scores(db, [row.id for row in rows])
            quality = {row.id: queries.ImageQuality.of(row, player, scores.get(row.id)) for row in rows}
            compared = sorted((style, shown) for (_, style), shown in _compared(db, [player]).items())
            page = _render("player", player=player, rows=rows, quality=quality, compared=compared, csrf=csrf_value)
            return HTMLResponse(page)

    async def image(request: Request) -> Response:
        try:
            with session_scope(engine) as db:
                key = audit.succeeded_asset(db, int(request.path_params["asset_id"]), "show").s3_key or ""
        except InvalidInput as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        return Response(storage.get(key), media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    def action(apply: Callable[[Any, int, dict[str, str]], object]) -> Handler:
        async def endpoint(request: Request) -> Response:
            asset_id = int(request.path_params["asset_id"])
            try:
                with session_scope(engine) as db:
                    apply(db, asset_id, request.state.form)
            except InvalidInput as exc:
                return HTMLResponse(_render("page", error=str(exc)), status_code=400)
            return RedirectResponse(_back(request), status_code=303)

        return endpoint

    approve = action(lambda db, asset_id, form: serving.approve(db, storage, asset_id, reviewer))
    reject = action(
        lambda db, asset_id, form: audit.reject(db, asset_id, reviewer, form.get("reason", ""), form.get("guidance"))
    )
    promote = action(lambda db, asset_id, form: serving.promote_asset(db, storage, asset_id))
    return Starlette(
        routes=[
            Route("/login", login, methods=["GET", "POST"]),
            Route("/", guarded(grid)),
            Route("/player/{player_id:int}", guarded(player_page)),
            Route("/image/{asset_id:int}", guarded(image)),
            Route("/approve/{asset_id:int}", guarded(approve, post=True), methods=["POST"]),
            Route("/reject/{asset_id:int}", guarded(reject, post=True), methods=["POST"]),
            Route("/promote/{asset_id:int}", guarded(promote, post=True), methods=["POST"]),
        ]
    )


@dataclass(frozen=True)
class VariantImage:
    """A player's newest image under one prompt variant, shown beside the other variants' with its score."""

    asset: PlayerImageAsset
    quality: queries.ImageQuality


@dataclass(frozen=True)
class Card:
    """One pending image on the grid: beside the player's live image, with its score and the other variants."""

    partition: str
    asset: PlayerImageAsset
    player: Player
    live: PlayerImageAsset | None
    quality: queries.ImageQuality
    variants: list[VariantImage]


def worst_first(quality: queries.ImageQuality) -> tuple[int, int]:
    """The desk's order: unscored images first (no judge has looked at them, and a judge that refused to score is
    itself a warning; with a key they are few, so they would be lost at the bottom), then by score, lowest first."""
    return (0, 0) if quality.score is None else (1, quality.score)


def _compared(db: Session, players: list[Player]) -> dict[tuple[int, str], list[VariantImage]]:
    """(player id, style) → the newest image of each prompt variant, where a player has more than one variant."""
    by_id = {player.id: player for player in players}
    newest = {key: shown for key, shown in queries.latest_by_variant(db, list(by_id)).items() if len(shown) > 1}
    scores = queries.latest_scores(db, [asset.id for shown in newest.values() for asset in shown])
    return {
        key: [
            VariantImage(asset, queries.ImageQuality.of(asset, by_id[asset.player_id], scores.get(asset.id)))
            for asset in shown
        ]
        for key, shown in newest.items()
    }


def _back(request: Request) -> str:
    """Back to the page the form was on: its path on this desk only, never another site named in a header."""
    referer = urlsplit(request.headers.get("referer", ""))
    if not referer.path.startswith("/") or referer.path.startswith("//"):
        return "/"
    return referer.path + (f"?{referer.query}" if referer.query else "")


def _derive(token: str, purpose: str) -> str:
    """A value derived from the token for one purpose: the cookie and the CSRF field never carry the token."""
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (small; the last value of each field)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return {key: values[-1] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}


def _render(name: str, **values: Any) -> str:
    return _TEMPLATES.get_template(name).render(error=values.pop("error", None), **values)
