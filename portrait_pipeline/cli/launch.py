"""From a CLI selection to Dagster runs: which partitions, which players, what it costs, what happened."""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import dagster as dg
import rich.progress
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portrait_pipeline.audit import queries
from portrait_pipeline.audit.models import PlayerImageAsset
from portrait_pipeline.cohorts import Selection, select_players
from portrait_pipeline.defs.config import LikenessRunConfig, PortraitRunConfig, partition_request
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import Resources
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.generation.partition import PartitionPlan, plan_partition
from portrait_pipeline.styles import Style, parse_style


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generate command's flags as `PortraitRunConfig` fields (player ids come per partition)."""
    return {
        "missing_only": args.missing_only,
        "image_size": args.size,
        "fetch_likeness": args.fetch_likeness,
        "likeness_url": args.likeness_url,
        "run_key": args.run_key,
        "notes": args.notes,
    }


def style_flag(value: str) -> Style:
    try:
        return parse_style(value)
    except InvalidInput as exc:
        raise InvalidInput(f"--{exc}") from None


@dataclass(frozen=True)
class PartitionLaunch:
    """One partition's run: its config (what Dagster gets) and its plan (what the dry run shows)."""

    config: PortraitRunConfig
    plan: PartitionPlan

    @property
    def partition_key(self) -> str:
        return self.plan.request.partition_key


@dataclass(frozen=True)
class GenerationPlan:
    label: str
    model: str
    image_size: str
    partitions: list[PartitionLaunch]

    @property
    def total_cost(self) -> Decimal:
        return sum((launch.plan.estimated_cost_usd for launch in self.partitions), Decimal("0"))


def plan_generation(
    resources: Resources, selection: Selection, styles: list[Style], settings: dict[str, Any], limit: int | None
) -> GenerationPlan:
    """Resolve the selection into (draft year, style) partitions, their configs and players; writes nothing."""
    model = resources.gemini.model
    current_year = resources.settings.current_draft_year
    label = selection.label(current_year)
    storage = resources.storage.get_storage()
    whole_class = selection.draft_year is not None or selection.cohort == "current_draft" or selection.all_players
    with resources.database.session() as db:
        players = select_players(db, selection, current_year)[:limit]
        if not players:
            raise InvalidInput(no_players_message(db, selection, current_year))
        by_year: dict[str, list[int]] = defaultdict(list)
        for player in players:
            by_year[queries.draft_year_key(player.draft_year)].append(player.id)
        launches = []
        for year_key, ids in sorted(by_year.items()):
            config = PortraitRunConfig(
                **settings, player_ids=[] if whole_class and limit is None else ids, cohort=label
            )
            for style in styles:
                request = partition_request(config, str(portrait_partition_key(year_key, style)), model)
                launches.append(PartitionLaunch(config, plan_partition(db, storage, request, model)))
    return GenerationPlan(label=label, model=model, image_size=settings["image_size"], partitions=launches)


def no_players_message(db: Session, selection: Selection, current_year: int) -> str:
    """Say what the selection resolved to and what the roster has, so the fix is obvious."""
    known = queries.draft_year_keys(db)
    if not known:
        return f"{selection.label(current_year)}: no players match; the roster is empty: import one first"
    resolved = (
        f" (current_draft is {current_year}; set CURRENT_DRAFT_YEAR to change it)"
        if (selection.cohort == "current_draft")
        else ""
    )
    return f"{selection.label(current_year)}: no players match{resolved}; draft years in the roster: {', '.join(known)}"


def render_plan(plan: GenerationPlan) -> str:
    """The dry-run table: players per partition, skips, model, size, cost."""
    lines = [
        f"Dry run for {plan.label}: model {plan.model}, size {plan.image_size}. Nothing generated, nothing written.",
        f"{'partition':<22}{'players':>8}{'generate':>10}{'skip':>6}{'est. cost':>12}",
    ]
    for launch in plan.partitions:
        partition = launch.plan
        total = len(partition.to_generate) + len(partition.skipped)
        lines.append(
            f"{launch.partition_key:<22}{total:>8}{len(partition.to_generate):>10}"
            f"{len(partition.skipped):>6}{'$' + format(partition.estimated_cost_usd, '.2f'):>12}"
        )
    generate = sum(len(launch.plan.to_generate) for launch in plan.partitions)
    skipped = sum(len(launch.plan.skipped) for launch in plan.partitions)
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


def run_generation(
    instance: dg.DagsterInstance, resources: Resources, plan: GenerationPlan, *, interactive: bool
) -> GenerationSummary:
    """One Dagster run per partition with work to do, on the persistent instance (visible in the UI).

    The runs go at once, from threads of this process: definitions are loaded once, and the runs' calls share
    the process's pacing (one rate, `max_concurrency` calls in flight across every partition), so a partition
    waiting for its slowest call leaves its slots to the others instead of idling the API.
    """
    from portrait_pipeline.defs.definitions import defs

    started = time.monotonic()
    with progress_display(interactive) as progress:
        todo = [launch for launch in plan.partitions if launch.plan.to_generate]
        instance.add_dynamic_partitions("draft_years", sorted({launch.plan.request.draft_year_key for launch in todo}))
        for launch in _first_of_each_draft_year(todo):
            if launch.plan.request.fetch_likeness:
                # Describe references first, so the portraits' lineage shows where the likeness came from.
                defs.resolve_job_def("likeness_job").execute_in_process(
                    run_config=likeness_run_config(launch.config),
                    instance=instance,
                    partition_key=launch.plan.request.draft_year_key,
                    tags=CLI_TAGS,
                    raise_on_error=False,
                )

        def run_one(launch: PartitionLaunch) -> PartitionSummary:
            partition, request = launch.plan, launch.plan.request
            if not partition.to_generate:
                return PartitionSummary(request.partition_key, "-", True, skipped=len(partition.skipped))
            run_id = str(uuid.uuid4())  # known before the run starts, so progress can follow it
            with watch_run(resources, run_id, request.partition_key, len(partition.to_generate), progress):
                result = defs.resolve_job_def("portraits_job").execute_in_process(
                    run_config={**launch.config.run_config(), "loggers": QUIET_LOGGERS},
                    instance=instance,
                    partition_key=str(portrait_partition_key(request.draft_year_key, request.style)),
                    run_id=run_id,
                    tags=CLI_TAGS,
                    raise_on_error=False,
                )
            return summarize_run(resources, request.partition_key, result.run_id, result.success)

        workers = max(1, min(len(plan.partitions), resources.gemini.max_concurrency))
        _configure_logging_once(instance)
        with ThreadPoolExecutor(workers, thread_name_prefix="partition") as pool:
            summaries = list(pool.map(run_one, plan.partitions))
    storage = resources.storage.get_storage().location
    return GenerationSummary(partitions=summaries, wall_time_s=time.monotonic() - started, storage=storage)


def _configure_logging_once(instance: dg.DagsterInstance) -> None:
    """Dagster runs `logging.config.dictConfig` for every run it starts (the instance's python_logs handlers), which
    closes every logging handler of the process while holding logging's lock: runs started from threads deadlock
    on it. Build those handlers once, here, and hand the same ones to every run of this process."""
    handlers = instance.get_yaml_python_handlers()
    object.__setattr__(instance, "get_yaml_python_handlers", lambda: handlers)


def _first_of_each_draft_year(launches: list[PartitionLaunch]) -> list[PartitionLaunch]:
    """One launch per draft year (its likeness descriptions serve every style)."""
    return list({launch.plan.request.draft_year_key: launch for launch in reversed(launches)}.values())[::-1]


CLI_TAGS = {"portrait/launched_by": "cli"}


def likeness_run_config(config: PortraitRunConfig) -> dict[str, Any]:
    likeness = LikenessRunConfig(player_ids=config.player_ids, likeness_url=config.likeness_url)
    return {
        "ops": {"likeness_descriptions": {"config": likeness.model_dump(exclude_unset=True)}},
        "loggers": QUIET_LOGGERS,
    }


QUIET_LOGGERS = {"console": {"config": {"log_level": "WARNING"}}}


@dataclass
class Progress:
    """Counts of one run, read from its audit rows while it runs."""

    done: int = 0
    failed: int = 0
    cost_usd: Decimal = Decimal("0")


def read_progress(resources: Resources, run_id: str) -> Progress:
    with resources.database.session() as db:
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
    resources: Resources, run_id: str, partition_key: str, total: int, display: ProgressDisplay
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


def summarize_run(resources: Resources, partition_key: str, run_id: str, success: bool) -> PartitionSummary:
    """What a run did, from the audit rows it wrote."""
    summary = PartitionSummary(partition_key, run_id, success)
    with resources.database.session() as db:
        snapshot = queries.snapshot_of_run(db, run_id)
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
