"""The review desk in a browser: pending images per partition beside the live one, approve / reject / promote.

Server-side templates (Jinja2) on Starlette, no JavaScript. Every route needs the token (REVIEW_TOKEN, compared
in constant time); every POST also carries a CSRF token derived from it, so a page elsewhere cannot post a form here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from itertools import groupby
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jinja2 import DictLoader, Environment, select_autoescape
from sqlalchemy import Engine, select
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
font-size:11px;max-height:8em;overflow:auto}.error{color:#b00}</style></head><body>
<p><a href="/">pending</a></p>{% if error %}<p class="error">{{ error }}</p>{% endif %}{% block body %}{% endblock %}
</body></html>"""

_LOGIN = """{% extends "page" %}{% block body %}<h1>Review desk</h1>
<form method="post" action="/login"><label>Token <input type="password" name="token"></label>
<button type="submit">Log in</button></form>{% endblock %}"""

_GRID = """{% extends "page" %}{% block body %}<h1>Pending review</h1>
{% for partition, cards in partitions %}<h2 id="{{ partition }}">{{ partition }}</h2>
{% for card in cards %}<div class="card" data-asset="{{ card.asset.id }}">
<b><a href="/player/{{ card.player.id }}">{{ card.player.display_name }}</a></b> asset {{ card.asset.id }}
<div class="pair"><figure><img src="/image/{{ card.asset.id }}" alt="new"><figcaption>new</figcaption></figure>
<figure>{% if card.live %}<img src="/image/{{ card.live.id }}" alt="live">
<figcaption>live: asset {{ card.live.id }}</figcaption>{% else %}<figcaption>no live image</figcaption>
{% endif %}</figure></div>
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

_PLAYER = """{% extends "page" %}{% block body %}<h1>{{ player.display_name }}</h1><table>
<tr><th>asset</th><th>when (UTC)</th><th>style</th><th>status</th><th>review</th><th></th></tr>
{% for row in rows %}<tr><td>{{ row.id }}{% if row.is_current %} (live){% endif %}</td>
<td>{{ row.created_at.strftime("%Y-%m-%d %H:%M") }}</td><td>{{ row.style }}</td><td>{{ row.status }}</td>
<td>{{ row.review_status }}{% if row.review_reason %}: {{ row.review_reason }}{% endif %}</td><td>
{% if row.status == "succeeded" %}<img src="/image/{{ row.id }}" alt="asset {{ row.id }}" style="width:80px">
{% if not row.is_current and row.review_status != "pending" %}<form method="post" action="/promote/{{ row.id }}">
<input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Promote</button></form>{% endif %}
{% endif %}</td></tr>{% endfor %}</table>{% endblock %}"""

_TEMPLATES = Environment(
    loader=DictLoader({"page": _PAGE, "login": _LOGIN, "grid": _GRID, "player": _PLAYER}),
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
            cards = []
            for asset, player in queries.review_queue(db, status=PENDING):
                live = queries.current_asset(db, player.id, asset.style)
                partition = naming.partition_label(queries.draft_year_key(player.draft_year), asset.style)
                cards.append({"partition": partition, "asset": asset, "player": player, "live": live})
            wanted = request.query_params.get("partition")  # the link from a Dagster materialization or check
            cards = [card for card in cards if wanted is None or card["partition"] == wanted]
            partitions = [(key, list(group)) for key, group in groupby(cards, key=lambda card: card["partition"])]
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
            return HTMLResponse(_render("player", player=player, rows=rows, csrf=csrf_value))

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
