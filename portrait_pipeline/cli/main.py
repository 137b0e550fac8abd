"""`portrait-pipeline`: the seed's script flags, running as Dagster runs on the project's instance."""

from __future__ import annotations

import argparse
import gc
import getpass
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from portrait_pipeline import roster
from portrait_pipeline.audit.db import REPO_ROOT, describe_error
from portrait_pipeline.audit.models import DEFAULT_VARIANT, PENDING, REVIEW_STATUSES, Player
from portrait_pipeline.audit.queries import EXPERIMENT_RUN_KEY_PREFIX, current_styles, draft_year_key
from portrait_pipeline.cli import experiments
from portrait_pipeline.cohorts import COHORTS, Selection, select_players
from portrait_pipeline.defs.resources import DatabaseResource, Resources
from portrait_pipeline.defs.runs import fail_runs_of_dead_workers
from portrait_pipeline.errors import ConfigurationError, InvalidInput, PortraitPipelineError, StorageError
from portrait_pipeline.interrupts import DEFAULT_GRACE_S, stop_on_signals
from portrait_pipeline.model_registry import IMAGE_SIZES, ImageSize
from portrait_pipeline.prompts import PROMPT_VARIANTS
from portrait_pipeline.styles import STYLES, Style

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


class UsageError(InvalidInput):
    """Bad command-line arguments (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 itself; keep one error path
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="portrait-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = commands.add_parser("db", help="migrate the app database (Alembic)")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", help="target revision (default: head / base)")
    db.add_argument("--yes", action="store_true", help="downgrade without asking (it drops tables and their rows)")

    players = commands.add_parser("players", help="the roster")
    player_commands = players.add_subparsers(dest="players_command", required=True, parser_class=_Parser)
    importer = player_commands.add_parser("import", help="upsert players from a CSV file, all or nothing")
    importer.add_argument("file", type=Path)
    lister = player_commands.add_parser("list", help="players of a selection and the styles each has")
    _add_selectors(lister, required=False)

    generate = commands.add_parser("generate", help="generate portraits (the seed's generate_player_images.py)")
    _add_selectors(generate)
    generate.add_argument("--style", action="append", help=f"{', '.join(STYLES)} (repeatable; default: default)")
    generate.add_argument("--missing-only", action="store_true", help="skip players who already have an image")
    generate.add_argument("--fetch-likeness", action="store_true", help="describe reference photos for likeness")
    generate.add_argument("--likeness-url", help="explicit reference image URL (single player only)")
    generate.add_argument("--size", default="1K", help=f"image size: {', '.join(IMAGE_SIZES)} (default 1K)")
    generate.add_argument("--run-key", help="unique run identifier; repeating it makes a new version")
    generate.add_argument("--dry-run", action="store_true", help="preview players and cost; write nothing")
    generate.add_argument("--limit", type=_positive, help="max players to process")
    generate.add_argument("--notes", help="notes for this run")
    generate.add_argument(
        "--batch", action="store_true", help="through Gemini's Batch API: half the price, results within 24 h"
    )
    generate.add_argument(
        "--prompt-variant",
        default=DEFAULT_VARIANT,
        metavar="NAME",
        help=f"{', '.join(PROMPT_VARIANTS)} (default: default); another variant's images wait for review, never live",
    )
    generate.add_argument(
        "--grace-period",
        type=_seconds,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help=f"after Ctrl-C/SIGTERM, how long calls in flight may still answer (default {DEFAULT_GRACE_S:g})",
    )
    batches = commands.add_parser("batch", help="the batch lane's Batch API jobs")
    batch_commands = batches.add_subparsers(dest="batch_command", required=True, parser_class=_Parser)
    batch_list = batch_commands.add_parser("list", help="pending and recent jobs: partition, players, age, state, cost")
    batch_list.add_argument("--limit", type=_positive, default=50, help="at most this many jobs (default 50)")
    batch_cancel = batch_commands.add_parser("cancel", help="cancel a pending job (its players fail CANCELLED)")
    batch_cancel.add_argument("job", help='the job\'s name, "batches/..." as `batch list` shows it')
    history = commands.add_parser("history", help="every generation of one player (the admin review)")
    history.add_argument("--player-id", type=int, required=True)

    url = commands.add_parser("url", help="the URL the app serves for a player and style")
    url.add_argument("--player-id", type=int, required=True)
    url.add_argument("--style", default="default", help=f"{', '.join(STYLES)}")

    promote = commands.add_parser("promote", help="make an earlier generation current again (rollback)")
    promote.add_argument("--asset-id", type=int, required=True)

    review = commands.add_parser("review", help="the review desk: approve or reject new images before they go live")
    review_commands = review.add_subparsers(dest="review_command", required=True, parser_class=_Parser)
    queue = review_commands.add_parser("list", help="images by review status (default: pending)")
    queue.add_argument("--draft-year", help="a draft class, e.g. 2025, or undrafted")
    queue.add_argument("--style", help=f"{', '.join(STYLES)}")
    queue.add_argument("--status", default=PENDING, choices=[*REVIEW_STATUSES, "all"])
    approve = review_commands.add_parser("approve", help="make pending images live")
    approve.add_argument("asset_ids", type=int, nargs="+", metavar="ASSET_ID")
    approve.add_argument("--by", default=None, help="who approves (default: the login name)")
    reject = review_commands.add_parser("reject", help="reject an image, with why; optionally regenerate it")
    reject.add_argument("asset_id", type=int, metavar="ASSET_ID")
    reject.add_argument("--reason", required=True, help="why (kept in the audit)")
    reject.add_argument("--guidance", help='a correction for the next prompt, e.g. "shorter hair" (kept as data)')
    reject.add_argument("--regenerate", action="store_true", help="generate a corrected image now (pending review)")
    reject.add_argument("--by", default=None, help="who rejects (default: the login name)")
    serve = review_commands.add_parser("serve", help="the review desk as a web page (token: REVIEW_TOKEN)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_positive, default=8765)
    serve.add_argument("--by", default=None, help="the name decisions are recorded under (default: the login name)")
    experiments.add_commands(commands)
    return parser


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value}: use a positive number")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value}: use a number of seconds, 0 or more")
    return seconds


def _add_selectors(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--player-id", type=int, help="one player by id")
    group.add_argument("--player-slug", help="one player by slug")
    group.add_argument("--cohort", choices=COHORTS, help="current_draft or current_nba")
    group.add_argument("--draft-year", type=int, help="a draft class, e.g. 2025")
    group.add_argument("--all", action="store_true", dest="all_players", help="every player")


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection(
        player_id=args.player_id,
        player_slug=args.player_slug,
        cohort=args.cohort,
        draft_year=args.draft_year,
        all_players=args.all_players,
    )


@dataclass
class Context:
    """What every command needs: the resources built from the environment, and the Dagster instance."""

    resources: Resources
    instance: dg.DagsterInstance

    @property
    def database(self) -> DatabaseResource:
        return self.resources.database


@contextmanager
def open_context() -> Iterator[Context]:
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterInvalidConfigError as exc:
        raise ConfigurationError(f"Dagster instance in {os.environ['DAGSTER_HOME']}: {exc}") from None
    with instance, Resources.from_env() as resources:
        for run_id in fail_runs_of_dead_workers(instance):
            print(f"portrait-pipeline: run {run_id}: its worker died without ending it; marked failed", file=sys.stderr)
        yield Context(resources=resources, instance=instance)


def cmd_db(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import db

    url = ctx.database.url
    db.checked_revision(db.engine_for(url))  # an unreachable server is one line, not Alembic's traceback
    if args.action == "upgrade":
        db.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        target = args.revision or "base"
        if _downgrade_confirmed(args.yes, db.downgrade_steps(url, target), db.where(db.engine_for(url)), target):
            db.downgrade(url, target)
    print(f"database at revision {db.current_revision(db.engine_for(url)) or 'none'} (head {db.head_revision()})")
    return EXIT_OK


def _downgrade_confirmed(yes: bool, steps: list[str], where: str, target: str) -> bool:
    """A downgrade drops tables and every row in them: only with --yes, or a typed "yes" at a terminal."""
    if not steps or yes:
        return bool(steps)
    what = (
        f"db downgrade to {target} would undo {len(steps)} migration(s) of {where}, dropping their tables and columns"
    )
    if target == "base":
        what += " (every table of the app, with all its rows)"
    what += f": {'; '.join(steps)}"
    if not sys.stdin.isatty():
        raise UsageError(f"{what}. Run again with --yes to do it")
    print(what)
    if input("Type yes to drop them: ").strip().lower() != "yes":
        raise UsageError("db downgrade not confirmed: nothing was dropped")
    return True


def cmd_players_import(args: argparse.Namespace, ctx: Context) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", roster.UndraftedByOmission)
        rows = roster.read_roster(args.file)
    for warning in caught:
        print(f"portrait-pipeline: warning: {warning.message}", file=sys.stderr)
    with ctx.database.session() as session:
        result = roster.import_roster(session, rows)
    keys = [draft_year_key(year) for year in result.draft_years]
    ctx.instance.add_dynamic_partitions("draft_years", keys)
    print(f"{args.file}: {result.created} created, {result.updated} updated; draft years: {', '.join(keys)}")
    return EXIT_OK


def cmd_players_list(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.naming import available_styles

    current_year = ctx.resources.settings.current_draft_year
    storage = ctx.resources.storage.get_storage()
    with ctx.database.session() as db:
        players = select_players(db, selection_of(args), current_year)
        styles = current_styles(db, [player.id for player in players])
    print(f"{'id':>5}  {'slug':<28}{'name':<28}{'draft':<10}{'nba':<5}{'ref':<5}styles")
    for player in players:
        found = sorted(styles.get(player.id, set()) | set(available_styles(storage, player.id)))
        print(
            f"{player.id:>5}  {player.slug:<28}{player.display_name:<28}{draft_year_key(player.draft_year):<10}"
            f"{'yes' if player.nba_active else 'no':<5}{'yes' if player.reference_image_url else 'no':<5}"
            f"{', '.join(found) or '-'}"
        )
    print(f"{len(players)} player(s)")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.cli import launch

    styles = list(dict.fromkeys(launch.style_flag(value) for value in (args.style or ["default"])))
    if args.run_key and args.run_key.startswith(EXPERIMENT_RUN_KEY_PREFIX):
        raise UsageError(f"--run-key {args.run_key}: {EXPERIMENT_RUN_KEY_PREFIX!r} keys belong to `experiment run`")
    return _generate(ctx, selection_of(args), styles, launch.run_settings(args), args.limit, dry_run=args.dry_run)


def preflight(ctx: Context, image_size: ImageSize, fetch_likeness: bool, dry_run: bool) -> None:
    """Before anything is generated or written: a dead model or an unknown price stops here (exit 2)."""
    judge = ctx.resources.settings.quality_judge
    warnings = ctx.resources.gemini.preflight(
        image_size=image_size, vision=fetch_likeness, judge=judge, dry_run=dry_run
    )
    for warning in warnings:
        print(f"portrait-pipeline: warning: {warning}", file=sys.stderr)


def check_storage(ctx: Context) -> None:
    try:
        ctx.resources.storage.get_storage().check_ready()
    except StorageError as exc:
        raise ConfigurationError(str(exc)) from None


def _generate(
    ctx: Context, selection: Selection, styles: list[Style], settings: dict[str, Any], limit: int | None, dry_run: bool
) -> int:
    """The generate path shared by `generate` and `review reject --regenerate`: plan, preflight, run, summarize."""
    from portrait_pipeline.cli import launch

    plan = launch.plan_generation(ctx.resources, selection, styles, settings, limit)
    preflight(ctx, plan.image_size, plan.fetch_likeness, dry_run)
    if dry_run:
        print(launch.render_plan(plan))
        return EXIT_OK
    check_storage(ctx)
    with stop_on_signals() as stop:
        summary = launch.run_generation(ctx.instance, ctx.resources, plan, interactive=sys.stdout.isatty(), stop=stop)
    print(launch.render_summary(summary))
    return summary.exit_status


def cmd_batch_list(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import batch_jobs
    from portrait_pipeline.audit.models import utcnow
    from portrait_pipeline.generation.batch import estimated_cost
    from portrait_pipeline.model_registry import usd

    with ctx.database.session() as db:
        jobs = batch_jobs.recent_jobs(db, args.limit)
    now = utcnow()
    print(f"{'job':<34}{'partition':<22}{'players':>8}  {'age':<9}{'state':<22}{'collected':<11}{'batch cost':>11}")
    for job in jobs:
        age = now - job.created_at
        hours, minutes = divmod(int(age.total_seconds()) // 60, 60)
        print(
            f"{job.name:<34}{job.partition_key:<22}{job.request_count:>8}  {f'{hours}h{minutes:02d}m':<9}"
            f"{job.state:<22}{'yes' if job.collected_at else 'pending':<11}{usd(estimated_cost(job), 2):>11}"
        )
    pending = [job for job in jobs if job.collected_at is None]
    print(f"{len(jobs)} job(s), {len(pending)} pending ({sum(job.request_count for job in pending)} players)")
    return EXIT_OK


def cmd_batch_cancel(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.generation.batch import cancel

    if not ctx.resources.gemini.uses_gemini:
        raise ConfigurationError("batch cancel needs GEMINI_API_KEY")
    job = cancel(ctx.database.check(), ctx.resources.gemini.client(), args.job)
    print(
        f"{job.name} cancelled ({job.request_count} players of {job.partition_key}); "
        "the next run of the partition records them failed (CANCELLED) and may resubmit them"
    )
    return EXIT_OK


def cmd_history(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import serving as image_assets_service

    with ctx.database.session() as db:
        entries = image_assets_service.history(db, _player(db, args.player_id).id)
    print(
        f"{'asset':>6}  {'when (UTC)':<20}{'style':<9}{'run key / version':<28}{'model':<28}{'status':<11}"
        f"{'prompt':<8}{'likeness':<9}image"
    )
    for entry in entries:
        marker = "*" if entry.is_current else " "
        image = entry.image_url or f"({entry.error_message})"
        print(
            f"{entry.asset_id:>5}{marker}  {entry.created_at:%Y-%m-%d %H:%M:%S}  {entry.style:<9}"
            f"{entry.run_key + ' v' + str(entry.snapshot_version):<28}{entry.model:<28}{entry.status:<11}"
            f"{entry.prompt_version:<8}{'yes' if entry.used_likeness else 'no':<9}{image}"
        )
    print(f"{len(entries)} generation(s); * = current")
    return EXIT_OK


def _player(db: Session, player_id: int) -> Player:
    player = db.get(Player, player_id)
    if player is None:
        raise InvalidInput(f"--player-id {player_id}: no such player")
    return player


def cmd_url(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import serving as image_assets_service
    from portrait_pipeline.cli.launch import style_flag

    style = style_flag(args.style)
    with ctx.database.session() as db:
        player = _player(db, args.player_id)
        print(image_assets_service.resolve_photo_url(db, ctx.resources.storage.get_storage(), player, style))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import serving as image_assets_service

    with ctx.database.session() as db:
        asset = image_assets_service.promote_asset(db, ctx.resources.storage.get_storage(), args.asset_id)
        print(f"asset {asset.id} is now the current {asset.style} image of player {asset.player_id}")
    return EXIT_OK


def _reviewer(value: str | None) -> str:
    name = (value or getpass.getuser()).strip()
    if not name:
        raise InvalidInput("--by: give the reviewer's name")
    return name[:200]


def cmd_review_list(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import queries
    from portrait_pipeline.cli.launch import style_flag

    year = queries.draft_year_key(queries.parse_draft_year_key(args.draft_year)) if args.draft_year else None
    style = style_flag(args.style) if args.style else None
    status = None if args.status == "all" else args.status
    with ctx.database.session() as db:
        rows = queries.review_queue(db, status=status, draft_year_key=year, style=style)
        current = {
            key: asset.id
            for key in {(a.player_id, a.style) for a, _ in rows}
            if (asset := queries.current_asset(db, *key)) is not None
        }
    print(
        f"{'asset':>6}  {'player':<30}{'draft':<10}{'style':<9}{'status':<10}{'variant':<19}{'when (UTC)':<18}"
        f"{'live':>6}  image"
    )
    for asset, player in rows:
        live_id = current.get((asset.player_id, asset.style))
        print(
            f"{asset.id:>6}  {f'{player.id} {player.display_name}':<30}{queries.draft_year_key(player.draft_year):<10}"
            f"{asset.style:<9}{asset.review_status:<10}{asset.prompt_variant:<19}{asset.created_at:%Y-%m-%d %H:%M}  "
            f"{live_id if live_id is not None else '-':>6}  {asset.public_url}"
        )
        if asset.review_reason or asset.guidance:
            print(f"{'':>8}reason: {asset.review_reason or '-'}; guidance: {asset.guidance or '-'}")
    print(f"{len(rows)} image(s); live = the asset serving that player and style now")
    return EXIT_OK


def cmd_review_approve(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import serving

    reviewer = _reviewer(args.by)
    storage = ctx.resources.storage.get_storage()
    for asset_id in args.asset_ids:
        with ctx.database.session() as db:
            asset = serving.approve(db, storage, asset_id, reviewer)
            if serving.is_trial(asset):
                print(
                    f"asset {asset.id} approved by {reviewer}: a trial image (prompt variant {asset.prompt_variant}); "
                    "counted in its experiment's report, never made live"
                )
                continue
            print(
                f"asset {asset.id} approved by {reviewer}: now the live {asset.style} image of player {asset.player_id}"
            )
    return EXIT_OK


def cmd_review_reject(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.audit import queries, records, serving
    from portrait_pipeline.audit.models import PlayerImageSnapshot
    from portrait_pipeline.cli import launch

    if args.guidance is not None and not args.guidance.strip():
        raise InvalidInput("--guidance: empty; leave it out or say what to change")
    with ctx.database.session() as db:
        target = records.succeeded_asset(db, args.asset_id, "reject")
        if args.regenerate and serving.is_trial(target):
            raise InvalidInput(
                f"asset {target.id}: a trial image (prompt variant {target.prompt_variant}) never goes live, so "
                "nothing regenerates it; reject it without --regenerate (its experiment's report counts the verdict)"
            )
        latest = queries.latest_image(db, target.player_id, target.style)
        if args.regenerate and latest is not None and latest.id != target.id:
            # The next generation corrects the player's newest image; regenerating from an older one would not.
            raise InvalidInput(
                f"asset {target.id}: player {target.player_id} has a newer {target.style} image (asset {latest.id}); "
                "review that one to regenerate"
            )
        asset = records.reject(db, args.asset_id, _reviewer(args.by), args.reason, args.guidance)
        player_id, style, likeness = asset.player_id, launch.style_flag(asset.style), asset.used_likeness_ref
        image_size = db.get_one(PlayerImageSnapshot, asset.snapshot_id).image_size
        print(f"asset {asset.id} rejected: {asset.review_reason}")
    if not args.regenerate:
        return EXIT_OK
    # A one-player run: its image links to the rejected one, carries the guidance as data, and waits for review.
    settings = {
        "missing_only": False,
        "image_size": image_size,
        "fetch_likeness": likeness,
        "likeness_url": None,
        "run_key": None,
        "notes": f"review: regenerate rejected asset {args.asset_id}",
        "grace_period_s": DEFAULT_GRACE_S,
    }
    return _generate(ctx, Selection(player_id=player_id), [style], settings, None, dry_run=False)


def cmd_review_serve(args: argparse.Namespace, ctx: Context) -> int:
    import secrets

    import uvicorn

    from portrait_pipeline.cli.review_app import check_bind, create_app

    token = os.environ.get("REVIEW_TOKEN", "").strip() or None
    check_bind(args.host, token)
    if token is None:
        # Loopback only (check_bind): a one-time token for this process, shown to whoever started it.
        token = secrets.token_urlsafe(24)
        print(f"REVIEW_TOKEN is not set: log in with the one-time token {token}")
    app = create_app(ctx.database.check(), ctx.resources.storage.get_storage(), token, _reviewer(args.by))
    print(f"review desk on http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


COMMANDS = {
    ("db", None): cmd_db,
    ("players", "import"): cmd_players_import,
    ("players", "list"): cmd_players_list,
    ("generate", None): cmd_generate,
    ("batch", "list"): cmd_batch_list,
    ("batch", "cancel"): cmd_batch_cancel,
    ("history", None): cmd_history,
    ("url", None): cmd_url,
    ("promote", None): cmd_promote,
    ("review", "list"): cmd_review_list,
    ("review", "approve"): cmd_review_approve,
    ("review", "reject"): cmd_review_reject,
    ("review", "serve"): cmd_review_serve,
    ("experiment", "run"): experiments.cmd_run,
    ("experiment", "report"): experiments.cmd_report,
    ("experiment", "list"): experiments.cmd_list,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Partitioned asset checks are a Dagster preview feature; its warning is noise on a command line.
    warnings.filterwarnings("ignore", message=".*is currently in preview.*")
    try:
        args = build_parser().parse_args(argv)
        handler = COMMANDS[(args.command, getattr(args, f"{args.command}_command", None))]
        with open_context() as ctx:
            return handler(args, ctx)
    except (InvalidInput, ConfigurationError) as exc:
        print(f"portrait-pipeline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PortraitPipelineError as exc:
        print(f"portrait-pipeline: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except SQLAlchemyError as exc:  # the transaction was rolled back; the reason, not SQLAlchemy's traceback
        print(f"portrait-pipeline: database error: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILURES
    except BrokenPipeError:  # `portrait-pipeline players list | head`
        sys.stderr.close()
        return EXIT_OK


def console() -> int:
    """The `portrait-pipeline` command: `main`, then an exit without the interpreter's last garbage collections.

    Those walk every object still alive (Dagster's definitions and a run's worth of events): 0.8 s of a 33 s
    `generate` on a 2-core machine, after the summary was printed. Everything that holds a file or a connection is
    closed by then (`open_context`); `gc.freeze()` only spares the collector the walk, and Python does not promise
    finalizers at exit anyway. Not in `main`, which tests call in-process: frozen objects are never freed.
    """
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(console())
