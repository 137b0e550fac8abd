"""From a CLI selection to Dagster runs: which partitions, which players, what it costs, what happened."""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import dagster as dg
import rich.progress
from sqlalchemy import func, select

from portrait_pipeline.audit.models import PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.cohorts import Selection, draft_year_key, select_players
from portrait_pipeline.costs import ImageSize, parse_image_size
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.generation.partition import PartitionPlan, PartitionRequest, plan_partition
from portrait_pipeline.roster import check_reference_url
from portrait_pipeline.styles import Style, parse_style


@dataclass(frozen=True)
class GenerationOptions:
    styles: tuple[Style, ...]
    image_size: str
    missing_only: bool = False
    fetch_likeness: bool = False
    likeness_url: str | None = None
    run_key: str | None = None
    limit: int | None = None
    notes: str | None = None


def options_from_args(args: argparse.Namespace) -> GenerationOptions:
    if args.limit is not None and args.limit < 1:
        raise InvalidInput(f"--limit {args.limit}: use a positive number")
    if args.likeness_url is not None:
        if args.player_id is None and args.player_slug is None:
            raise InvalidInput("--likeness-url needs a single player: add --player-id or --player-slug")
        try:
            check_reference_url(args.likeness_url)
        except InvalidInput:
            raise InvalidInput(f"--likeness-url {args.likeness_url}: only http(s) URLs") from None
    styles = tuple(dict.fromkeys(style_flag(value) for value in (args.style or ["default"])))
    return GenerationOptions(
        styles=styles,
        image_size=args.size,
        missing_only=args.missing_only,
        fetch_likeness=args.fetch_likeness or args.likeness_url is not None,
        likeness_url=args.likeness_url,
        run_key=args.run_key,
        limit=args.limit,
        notes=args.notes,
    )


def style_flag(value: str) -> Style:
    try:
        return parse_style(value)
    except InvalidInput as exc:
        raise InvalidInput(f"--{exc}") from None


@dataclass(frozen=True)
class GenerationPlan:
    label: str
    model: str
    image_size: ImageSize
    partitions: list[PartitionPlan]

    @property
    def total_cost(self) -> Decimal:
        return sum((plan.estimated_cost_usd for plan in self.partitions), Decimal("0"))


def plan_generation(resources: dict[str, Any], selection: Selection, options: GenerationOptions) -> GenerationPlan:
    """Resolve the selection into (draft year, style) partitions and their players; writes nothing."""
    model = resources["gemini"].model
    image_size = parse_image_size(options.image_size, model)
    current_year = resources["settings"].current_draft_year
    storage = resources["storage"].get_storage()
    whole_class = selection.draft_year is not None or selection.cohort == "current_draft" or selection.all_players
    with resources["database"].session() as db:
        players = select_players(db, selection, current_year)
        if options.limit is not None:
            players = players[: options.limit]
        if not players:
            raise InvalidInput(f"{selection.label(current_year)}: no players match; import a roster first")
        by_year: dict[str, list[int]] = defaultdict(list)
        for player in players:
            by_year[draft_year_key(player.draft_year)].append(player.id)
        plans = [
            plan_partition(
                db,
                storage,
                PartitionRequest(
                    draft_year_key=year_key,
                    style=style,
                    image_size=image_size,
                    missing_only=options.missing_only,
                    player_ids=() if whole_class and options.limit is None else tuple(ids),
                    run_key=options.run_key,
                    notes=options.notes,
                    cohort=selection.label(current_year),
                    fetch_likeness=options.fetch_likeness,
                    likeness_url=options.likeness_url,
                ),
                model,
            )
            for year_key, ids in sorted(by_year.items())
            for style in options.styles
        ]
    return GenerationPlan(label=selection.label(current_year), model=model, image_size=image_size, partitions=plans)


def render_plan(plan: GenerationPlan) -> str:
    """The dry-run table: players per partition, skips, model, size, cost."""
    lines = [
        f"Dry run for {plan.label}: model {plan.model}, size {plan.image_size}. Nothing generated, nothing written.",
        f"{'partition':<22}{'players':>8}{'generate':>10}{'skip':>6}{'est. cost':>12}",
    ]
    for partition in plan.partitions:
        total = len(partition.to_generate) + len(partition.skipped)
        lines.append(
            f"{partition.request.partition_key:<22}{total:>8}{len(partition.to_generate):>10}"
            f"{len(partition.skipped):>6}{'$' + format(partition.estimated_cost_usd, '.2f'):>12}"
        )
    generate = sum(len(partition.to_generate) for partition in plan.partitions)
    skipped = sum(len(partition.skipped) for partition in plan.partitions)
    lines.append(
        f"{'total':<22}{generate + skipped:>8}{generate:>10}{skipped:>6}{'$' + format(plan.total_cost, '.2f'):>12}"
    )
    return "\n".join(lines)


@dataclass
class PartitionSummary:
    partition_key: str
    run_id: str
    success: bool
    generated: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    cost_usd: Decimal = Decimal("0")


@dataclass
class GenerationSummary:
    partitions: list[PartitionSummary]
    wall_time_s: float
    storage: str

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [failure for partition in self.partitions for failure in partition.failures]


def run_config(request: PartitionRequest) -> dict[str, Any]:
    config = {
        "missing_only": request.missing_only,
        "player_ids": list(request.player_ids),
        "run_key": request.run_key,
        "image_size": request.image_size,
        "notes": request.notes,
        "fetch_likeness": request.fetch_likeness,
        "likeness_url": request.likeness_url,
        "cohort": request.cohort,
    }
    return {
        "ops": {"player_portraits": {"config": {key: value for key, value in config.items() if value is not None}}},
        "loggers": QUIET_LOGGERS,
    }


def run_generation(
    instance: dg.DagsterInstance, resources: dict[str, Any], plan: GenerationPlan, *, interactive: bool
) -> GenerationSummary:
    """One Dagster run per partition with work to do, on the persistent instance (visible in the UI)."""
    from portrait_pipeline.defs.definitions import defs

    started = time.monotonic()
    summaries: list[PartitionSummary] = []
    likeness_done: set[str] = set()
    with progress_display(interactive) as progress:
        for partition in plan.partitions:
            request = partition.request
            if not partition.to_generate:
                summaries.append(PartitionSummary(request.partition_key, "-", True, skipped=len(partition.skipped)))
                continue
            instance.add_dynamic_partitions("draft_years", [request.draft_year_key])
            if request.fetch_likeness and request.draft_year_key not in likeness_done:
                # Describe references first, so the portraits' lineage shows where the likeness came from.
                likeness_done.add(request.draft_year_key)
                defs.resolve_job_def("likeness_job").execute_in_process(
                    run_config=likeness_run_config(request),
                    instance=instance,
                    partition_key=request.draft_year_key,
                    tags=CLI_TAGS,
                    raise_on_error=False,
                )
            run_id = str(uuid.uuid4())  # known before the run starts, so progress can follow it
            with watch_run(resources, run_id, request.partition_key, len(partition.to_generate), progress):
                result = defs.resolve_job_def("portraits_job").execute_in_process(
                    run_config=run_config(request),
                    instance=instance,
                    partition_key=str(portrait_partition_key(request.draft_year_key, request.style)),
                    run_id=run_id,
                    tags=CLI_TAGS,
                    raise_on_error=False,
                )
            summaries.append(summarize_run(resources, request.partition_key, result.run_id, result.success))
    storage = resources["storage"].get_storage().location
    return GenerationSummary(partitions=summaries, wall_time_s=time.monotonic() - started, storage=storage)


CLI_TAGS = {"portrait/launched_by": "cli"}


def likeness_run_config(request: PartitionRequest) -> dict[str, Any]:
    config: dict[str, Any] = {"player_ids": list(request.player_ids)}
    if request.likeness_url:
        config["likeness_url"] = request.likeness_url
    return {"ops": {"likeness_descriptions": {"config": config}}, "loggers": QUIET_LOGGERS}


QUIET_LOGGERS = {"console": {"config": {"log_level": "WARNING"}}}


@dataclass
class Progress:
    """Counts of one run, read from its audit rows while it runs."""

    done: int = 0
    failed: int = 0
    cost_usd: Decimal = Decimal("0")


def read_progress(resources: dict[str, Any], run_id: str) -> Progress:
    with resources["database"].session() as db:
        rows = db.execute(
            select(PlayerImageAsset.status, func.count(), func.coalesce(func.sum(PlayerImageAsset.cost_usd), 0))
            .where(PlayerImageAsset.dagster_run_id == run_id)
            .group_by(PlayerImageAsset.status)
        ).all()
    counts = {status: (int(n), Decimal(cost)) for status, n, cost in rows}
    done = sum(n for n, _ in counts.values())
    return Progress(
        done=done, failed=counts.get("failed", (0, 0))[0], cost_usd=sum((c for _, c in counts.values()), Decimal(0))
    )


class ProgressDisplay(Protocol):
    def show(self, partition_key: str, total: int, progress: Progress) -> None: ...


class PlainProgress:
    """Output that is not a terminal gets one plain line whenever the counts change."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def show(self, partition_key: str, total: int, progress: Progress) -> None:
        if self._last.get(partition_key) == (progress.done, progress.failed):
            return
        self._last[partition_key] = (progress.done, progress.failed)
        print(
            f"{partition_key}: {progress.done}/{total} done, {progress.failed} failed, ${progress.cost_usd:.2f}",
            flush=True,
        )


class RichProgress:
    """A progress bar per partition: players done / total, failures, spend so far."""

    def __init__(self, bars: rich.progress.Progress) -> None:
        self._bars = bars
        self._tasks: dict[str, rich.progress.TaskID] = {}

    def show(self, partition_key: str, total: int, progress: Progress) -> None:
        if partition_key not in self._tasks:
            self._tasks[partition_key] = self._bars.add_task(partition_key, total=total)
        self._bars.update(
            self._tasks[partition_key],
            completed=progress.done,
            description=f"{partition_key}  failed {progress.failed}  ${progress.cost_usd:.2f}",
        )


@contextmanager
def progress_display(interactive: bool) -> Iterator[ProgressDisplay]:
    if not interactive:
        yield PlainProgress()
        return
    with rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        rich.progress.TimeElapsedColumn(),
    ) as bars:
        yield RichProgress(bars)


@contextmanager
def watch_run(
    resources: dict[str, Any], run_id: str, partition_key: str, total: int, display: ProgressDisplay
) -> Iterator[None]:
    """Poll the run's audit rows from a thread while the run executes in this one."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.3):
            display.show(partition_key, total, read_progress(resources, run_id))

    display.show(partition_key, total, Progress())
    thread = threading.Thread(target=poll, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        display.show(partition_key, total, read_progress(resources, run_id))


def summarize_run(resources: dict[str, Any], partition_key: str, run_id: str, success: bool) -> PartitionSummary:
    """What a run did, from the audit rows it wrote."""
    summary = PartitionSummary(partition_key, run_id, success)
    with resources["database"].session() as db:
        snapshot = db.scalar(select(PlayerImageSnapshot).where(PlayerImageSnapshot.dagster_run_id == run_id))
        if snapshot is None:
            summary.failures.append((partition_key, "the run failed before it recorded anything (see its logs)"))
            return summary
        summary.skipped = snapshot.skipped_count
        for asset in db.scalars(select(PlayerImageAsset).where(PlayerImageAsset.snapshot_id == snapshot.id)):
            if asset.status == "succeeded":
                summary.generated += 1
                summary.cost_usd += asset.cost_usd
            else:
                summary.failures.append((asset.player.display_name, asset.error_message or "unknown"))
    return summary


def render_summary(summary: GenerationSummary) -> str:
    lines = [f"{'partition':<22}{'generated':>10}{'skipped':>9}{'failed':>8}{'cost':>10}  run"]
    for p in summary.partitions:
        lines.append(
            f"{p.partition_key:<22}{p.generated:>10}{p.skipped:>9}{len(p.failures):>8}"
            f"{'$' + format(p.cost_usd, '.2f'):>10}  {p.run_id}"
        )
    for who, reason in summary.failed:
        lines.append(f"FAILED {who}: {reason}")
    lines.append(f"wall time {summary.wall_time_s:.1f}s; images in {summary.storage}")
    return "\n".join(lines)
