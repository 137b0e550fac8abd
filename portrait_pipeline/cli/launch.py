"""From a CLI selection to Dagster runs: which partitions, which players, what it costs, what happened."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, Literal, Protocol, TypeVar, cast

import dagster as dg
import rich.progress
from dagster._serdes import ConfigurableClassData
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from portrait_pipeline.audit import batch_jobs, queries
from portrait_pipeline.audit.models import PENDING, ImageQualityScore, PlayerImageAsset
from portrait_pipeline.cohorts import Selection, select_players
from portrait_pipeline.defs.config import LikenessRunConfig, PortraitRunConfig, partition_request
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import Resources, resources_from_env
from portrait_pipeline.defs.runs import worker_tags
from portrait_pipeline.errors import InvalidInput, PortraitPipelineError
from portrait_pipeline.generation.pacing import CallSlots, calls_queued
from portrait_pipeline.generation.partition import PartitionPlan, plan_partition
from portrait_pipeline.interrupts import StopRequest, exit_status
from portrait_pipeline.model_registry import ImagePricing, ImageSize, parse_image_size, usd
from portrait_pipeline.prompts import prompt_variant
from portrait_pipeline.styles import Style, parse_style

T = TypeVar("T")


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generate command's flags as `PortraitRunConfig` fields (player ids come per partition)."""
    return {
        "missing_only": args.missing_only,
        "image_size": args.size,
        "fetch_likeness": args.fetch_likeness,
        "likeness_url": args.likeness_url,
        "run_key": args.run_key,
        "notes": args.notes,
        "grace_period_s": args.grace_period,
        "lane": "batch" if args.batch else "standard",
        "prompt_variant": args.prompt_variant,
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
    pending_jobs: int = 0  # batch lane: Batch API jobs of the partition waiting to be collected (by this run)

    @property
    def partition_key(self) -> str:
        return self.plan.request.partition_key

    @property
    def has_work(self) -> bool:
        return bool(self.plan.to_generate or self.pending_jobs)


@dataclass(frozen=True)
class GenerationPlan:
    label: str
    pricing: ImagePricing
    image_size: ImageSize
    partitions: list[PartitionLaunch]

    @property
    def model(self) -> str:
        return self.pricing.model

    @property
    def fetch_likeness(self) -> bool:
        return any(launch.plan.request.fetch_likeness for launch in self.partitions)

    def total_cost(self, lane: Literal["standard", "batch"] = "standard") -> Decimal | None:
        """Every partition's estimate on one lane; None if the price is unknown."""
        images = sum(len(launch.plan.to_generate) for launch in self.partitions)
        return self.pricing.estimate(self.image_size, images, lane)


def plan_generation(
    resources: Resources, selection: Selection, styles: list[Style], settings: dict[str, Any], limit: int | None
) -> GenerationPlan:
    """Resolve the selection into (draft year, style) partitions, their configs and players; writes nothing."""
    model, pricing = resources.gemini.model, resources.gemini.image_pricing()
    image_size = parse_image_size(settings["image_size"], model)
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
                jobs = len(batch_jobs.pending_jobs(db, request.partition_key)) if request.lane == "batch" else 0
                launches.append(PartitionLaunch(config, plan_partition(db, storage, request, pricing), jobs))
    return GenerationPlan(label=label, pricing=pricing, image_size=image_size, partitions=launches)


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
    """The dry-run table: players per partition, skips, model, size, and the cost on the standard and batch lanes."""
    pricing, size = plan.pricing, plan.image_size
    lines = [
        f"Dry run for {plan.label}: model {plan.model}, size {size}, {usd(pricing.standard_usd(size))} an image "
        f"(batch {usd(pricing.batch_usd(size))}). Nothing generated, nothing written.",
        *dict.fromkeys(variant_line(launch.config.prompt_variant) for launch in plan.partitions),
        f"{'partition':<22}{'players':>8}{'generate':>10}{'skip':>6}{'standard':>12}{'batch':>12}",
    ]
    for launch in plan.partitions:
        partition = launch.plan
        total = len(partition.to_generate) + len(partition.skipped)
        lines.append(
            f"{launch.partition_key:<22}{total:>8}{len(partition.to_generate):>10}{len(partition.skipped):>6}"
            f"{usd(partition.estimated_cost_usd, 2):>12}{usd(partition.estimated_batch_cost_usd, 2):>12}"
        )
    generate = sum(len(launch.plan.to_generate) for launch in plan.partitions)
    skipped = sum(len(launch.plan.skipped) for launch in plan.partitions)
    lines.append(
        f"{'total':<22}{generate + skipped:>8}{generate:>10}{skipped:>6}"
        f"{usd(plan.total_cost(), 2):>12}{usd(plan.total_cost('batch'), 2):>12}"
    )
    if pricing.standard_usd(size) is None:
        lines.append(f"{plan.model} has no {size} price in the model registry: set GEMINI_IMAGE_PRICE_USD to run it.")
    return "\n".join(lines)


def variant_line(name: str) -> str:
    """What a prompt variant is, in one line: name, version, what it changes, and whether its images go live."""
    variant = prompt_variant(name)
    live = "" if variant.is_default else "; its images wait for review and never go live"
    return f"Prompt variant {variant.name} ({variant.version}): {variant.changes}{live}."


@dataclass
class PartitionSummary:
    """What one partition's run did: its Dagster status, and the counts and cost of the audit rows it wrote."""

    partition_key: str
    run_id: str = "-"
    status: str = "nothing to do"  # the Dagster run's status (SUCCESS, FAILURE, CANCELED), or why there is no run
    planned: int = 0
    generated: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    cost_usd: Decimal = Decimal("0")  # every image row of the run: paid failures and quality retries cost money too
    judge_cost_usd: Decimal = Decimal("0")  # the quality judge's calls (image_quality_scores rows)
    rows: int = 0  # audit rows the run wrote
    retried: int = 0  # rows beyond one per player: automatic quality retries
    held: int = 0  # images stored but waiting for review (the judge failed them, or review is required)
    stopped: str | None = None  # why the run started no more calls (breaker, budget, signal)
    run_error: str | None = None  # why the Dagster run failed, in one line
    audit_error: str | None = None  # the audit rows could not be read: the counts come from the run's log

    @property
    def done(self) -> bool:
        return self.status in ("SUCCESS", "nothing to do")

    @property
    def not_started(self) -> int:
        return max(0, self.planned - self.generated - len(self.failures))

    @property
    def wrote(self) -> bool:
        """Whether the run may have written anything: an audit row, or (unreadable audit) any attempt at all."""
        return self.rows > 0 or (self.audit_error is not None and self.status != "not launched")


@dataclass
class GenerationSummary:
    partitions: list[PartitionSummary]
    wall_time_s: float
    storage: str
    interrupted: str | None = None  # "interrupted by SIGINT" when a signal stopped the command
    signum: int | None = None

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [failure for partition in self.partitions for failure in partition.failures]

    @property
    def exit_status(self) -> int:
        """130/143 after a signal; 0 when every partition is done with every planned player generated; 2 only when
        nothing at all was written (no audit row, so no image committed); 1 otherwise."""
        if self.signum is not None:
            return exit_status(self.signum)
        if all(p.done and not p.failures and not p.not_started for p in self.partitions):
            return 0
        return 1 if any(p.wrote for p in self.partitions) else 2


def run_generation(
    instance: dg.DagsterInstance,
    resources: Resources,
    plan: GenerationPlan,
    *,
    interactive: bool,
    stop: StopRequest | None = None,
) -> GenerationSummary:
    """One Dagster run per partition with work to do, on the persistent instance (visible in the UI).

    The runs go at once, from worker threads of this process: definitions are loaded once, and the runs' calls
    share the process's pacing (one rate, `max_concurrency` calls in flight across every partition), so a partition
    waiting for its slowest call leaves its slots to the others instead of idling the API. The main thread keeps
    the signal handlers (Dagster installs its own only on the main thread): a signal stops the runs in progress
    and launches no other.
    """
    from portrait_pipeline.defs.definitions import definitions

    defs = definitions(resources_from_env())  # this environment's settings, whoever imported the module first
    stop = stop or StopRequest()
    started = time.monotonic()
    tags = {**CLI_TAGS, **worker_tags()}
    with (
        progress_display(interactive) as display,
        runs_instance(instance) as runs,
        ProgressBoard(resources, display) as board,
    ):
        todo = [launch for launch in plan.partitions if launch.has_work]
        gate = LaunchGate(image_call_slots(resources, todo))
        runs.add_dynamic_partitions("draft_years", sorted({launch.plan.request.draft_year_key for launch in todo}))
        for launch in _first_of_each_draft_year(todo):
            if launch.plan.request.fetch_likeness and not stop.requested:
                # Describe references first, so the portraits' lineage shows where the likeness came from.
                in_worker_thread(
                    partial(
                        defs.resolve_job_def("likeness_job").execute_in_process,
                        run_config=likeness_run_config(launch.config),
                        instance=runs,
                        partition_key=launch.plan.request.draft_year_key,
                        tags=tags,
                        raise_on_error=False,
                    )
                )

        def run_one(launch: PartitionLaunch) -> PartitionSummary:
            """One partition's run, in a pool thread (never the main one, which keeps the signal handlers)."""
            partition, request = launch.plan, launch.plan.request
            planned = len(partition.to_generate)
            if not launch.has_work:
                return PartitionSummary(request.partition_key, skipped=len(partition.skipped))
            run_id = str(uuid.uuid4())  # known before the run starts, so progress can follow it
            with gate.turn(stop) as launched:
                if not launched:
                    return PartitionSummary(request.partition_key, status="not launched", planned=planned)
                with board.follow(run_id, request.partition_key, planned):
                    defs.resolve_job_def("portraits_job").execute_in_process(
                        run_config={**launch.config.run_config(), "loggers": QUIET_LOGGERS},
                        instance=runs,
                        partition_key=str(portrait_partition_key(request.draft_year_key, request.style)),
                        run_id=run_id,
                        tags=tags,
                        raise_on_error=False,
                    )
            return summarize_run(resources, runs, request.partition_key, run_id, planned)

        workers = max(1, min(len(plan.partitions), resources.gemini.max_concurrency))
        with ThreadPoolExecutor(workers, thread_name_prefix="partition") as pool:
            summaries = list(pool.map(run_one, plan.partitions))
    storage = resources.storage.get_storage().location
    return GenerationSummary(
        partitions=summaries,
        wall_time_s=time.monotonic() - started,
        storage=storage,
        interrupted=stop.reason if stop.requested else None,
        signum=stop.signum,
    )


def image_call_slots(resources: Resources, launches: list[PartitionLaunch]) -> CallSlots | None:
    """The image model's call slots, shared by every run of this process; None when the runs make no paced image
    calls (the offline renderer, the batch lane)."""
    if not resources.gemini.uses_gemini or any(launch.plan.request.lane == "batch" for launch in launches):
        return None
    return resources.gemini.client().pacing.slots


class LaunchGate:
    """Starts partition runs one at a time: each once the run before it has asked for its first call slot, and
    only while fewer calls wait for a slot than there are slots.

    The runs share one interpreter and its lock. Launched all at once, 16 runs went through their start-ups (run
    record, execution plan, resources, claims) side by side, and the first call left when the first of them was
    through: 3.7 s after the launch on a 2-core machine, with every slot idle meanwhile. One at a time, the first
    call leaves after one start-up and the other runs start while calls are in flight. More calls queued than there
    are slots would only hold claims and memory: the next run starts when the queue has room.
    """

    def __init__(self, slots: CallSlots | None, patience_s: float = 5.0, poll_s: float = 0.02) -> None:
        self._slots = slots
        self._patience_s = patience_s  # a run that makes no call in this long (slow preflight) no longer holds others
        self._poll_s = poll_s
        self._lock = threading.Lock()  # one launcher waits for its turn at a time
        self._starting: threading.Event | None = None  # set once the latest run asked for a slot or ended
        self._since = 0.0

    @contextmanager
    def turn(self, stop: StopRequest) -> Iterator[bool]:
        """Wait for this run's turn; False if a stop came first. Launch the run inside: its calls end the turn."""
        if self._slots is None:
            yield not stop.requested
            return
        with self._lock:
            while not stop.requested and not self._open(self._slots):
                time.sleep(self._poll_s)
            started = threading.Event()
            self._starting, self._since = started, time.monotonic()
        if stop.requested:
            started.set()
            yield False
            return
        token = calls_queued.set(started.set)
        try:
            yield True
        finally:
            calls_queued.reset(token)
            started.set()  # ended without asking for a call (nothing left to do, a failure)

    def _open(self, slots: CallSlots) -> bool:
        previous = self._starting
        started = previous is None or previous.is_set() or time.monotonic() - self._since >= self._patience_s
        return started and slots.waiting < slots.size


# Dagster captures a run's stdout and stderr by pointing the process's file descriptors 1 and 2 at the run's log
# file, with a `tail` and a watcher process per stream to mirror it. Runs in threads of one process share those
# descriptors: they swap them under each other, and the CLI's own output ended in some run's log file. The runs
# print nothing (their logs go to the event log, which the UI shows), so the CLI's runs capture nothing.
NO_CAPTURE = ConfigurableClassData("dagster._core.storage.noop_compute_log_manager", "NoOpComputeLogManager", "{}")


@contextmanager
def runs_instance(instance: dg.DagsterInstance) -> Iterator[dg.DagsterInstance]:
    """The instance the CLI's runs execute on: the same storages and settings, without compute-log capture."""
    runs = dg.DagsterInstance.from_ref(instance.get_ref()._replace(compute_logs_data=NO_CAPTURE))
    _configure_logging_once(runs)
    try:
        yield runs
    finally:
        runs.dispose()


def in_worker_thread(work: Callable[[], T]) -> T:
    """`work()` in a daemon thread while this thread waits, free to run signal handlers (a third signal, whose
    default action ends the process, is not held up by the thread)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="dagster-run", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["result"])


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


# Stack traces go to the run's log (the UI); the CLI prints one line per problem from the summary.
QUIET_LOGGERS = {"console": {"config": {"log_level": "CRITICAL"}}}


@dataclass
class Progress:
    """Counts of one run, read from its audit rows while it runs."""

    done: int = 0
    failed: int = 0
    cost_usd: Decimal = Decimal("0")


def read_progress(resources: Resources, run_ids: list[str]) -> dict[str, Progress]:
    """The counts of every run asked for, in one query (a run without rows yet has none)."""
    with resources.database.session() as db:
        rows = db.execute(
            select(
                PlayerImageAsset.dagster_run_id,
                PlayerImageAsset.status,
                func.count(),
                func.coalesce(func.sum(PlayerImageAsset.cost_usd), 0),
            )
            .where(PlayerImageAsset.dagster_run_id.in_(run_ids))
            .group_by(PlayerImageAsset.dagster_run_id, PlayerImageAsset.status)
        ).all()
    progress = {run_id: Progress() for run_id in run_ids}
    for run_id, status, count, cost in rows:
        counts = progress[str(run_id)]  # one of run_ids: the query asked for no other
        counts.done += int(count)
        counts.failed += int(count) if status == "failed" else 0
        counts.cost_usd += Decimal(cost)
    return progress


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


class ProgressBoard:
    """The progress of every run in flight, read by one thread in one query every `every_s`, however many runs
    there are (a poller per run, each querying every 0.3 s, was a query every 20 ms with 16 runs in flight)."""

    def __init__(self, resources: Resources, display: ProgressDisplay, every_s: float = 0.5) -> None:
        self._resources = resources
        self._display = display
        self._every_s = every_s
        self._runs: dict[str, tuple[str, int]] = {}  # run id -> (partition key, players planned)
        self._lock = threading.Lock()  # the runs' threads add and remove; the poller reads; shows are serial
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)

    def __enter__(self) -> ProgressBoard:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def follow(self, run_id: str, partition_key: str, total: int) -> Iterator[None]:
        """Show the run's counts while it runs, and its final counts once it has ended."""
        with self._lock:
            self._display.show(partition_key, total, Progress())
            self._runs[run_id] = (partition_key, total)
        try:
            yield
        finally:
            with self._lock:
                self._show([run_id])
                del self._runs[run_id]

    def _poll(self) -> None:
        while not self._stop.wait(self._every_s):
            with self._lock:
                self._show(list(self._runs))

    def _show(self, run_ids: list[str]) -> None:
        if not run_ids:
            return
        with contextlib.suppress(SQLAlchemyError, PortraitPipelineError):  # unreachable: the summary says so
            for run_id, progress in read_progress(self._resources, run_ids).items():
                self._display.show(*self._runs[run_id], progress)


def summarize_run(
    resources: Resources, instance: dg.DagsterInstance, partition_key: str, run_id: str, planned: int
) -> PartitionSummary:
    """What a run did: its status and failure from Dagster, its counts and cost from the audit rows it wrote.

    When the audit database cannot be read, the run's own counts (its materialization or failure metadata in
    Dagster's log) stand in, and the summary says so.
    """
    run = instance.get_run_by_id(run_id)
    summary = PartitionSummary(partition_key, run_id, run.status.value if run else "not launched", planned=planned)
    summary.run_error, metadata = run_outcome(instance, run_id)
    summary.stopped = metadata.get("stopped") if metadata.get("stopped") not in (None, "no") else None
    try:
        with resources.database.session() as db:
            snapshot = queries.snapshot_of_run(db, run_id)
            summary.skipped = snapshot.skipped_count if snapshot else 0
            query = select(PlayerImageAsset).where(PlayerImageAsset.dagster_run_id == run_id)
            assets = db.scalars(query.order_by(PlayerImageAsset.id)).all()
            # Per player, not per row: a quality retry is a second row (and a second paid image) of one player.
            stored: set[int] = set()
            failed: dict[int, tuple[str, str]] = {}
            for asset in assets:
                summary.rows += 1
                summary.cost_usd += asset.cost_usd or Decimal("0")
                if asset.status == "succeeded":
                    stored.add(asset.player_id)
                    summary.held += asset.review_status == PENDING
                else:
                    failed[asset.player_id] = (asset.player.display_name, asset.error_message or "unknown")
            summary.generated = len(stored)
            summary.failures = [failure for player_id, failure in failed.items() if player_id not in stored]
            summary.retried = summary.rows - len(stored | set(failed))
            judged = select(func.coalesce(func.sum(ImageQualityScore.cost_usd), 0))
            summary.judge_cost_usd = Decimal(db.scalar(judged.where(ImageQualityScore.dagster_run_id == run_id)) or 0)
    except (SQLAlchemyError, PortraitPipelineError) as exc:
        summary.audit_error = one_line(exc)
        summary.generated = int(metadata.get("generated", 0))
        summary.skipped = int(metadata.get("skipped", 0))
        summary.cost_usd = Decimal(str(metadata.get("cost_usd", 0)))
        failures = int(metadata.get("failed", 0))
        summary.failures = [(f"{failures} player(s)", "see the run's log")] if failures else []
    return summary


def run_outcome(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, dict[str, Any]]:
    """Why the run failed (one line, or None) and the asset's summary metadata (from its materialization, or the
    metadata of the failure it raised)."""
    error: str | None = None
    metadata: dict[str, Any] = {}
    kinds = {
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.ASSET_MATERIALIZATION,
        dg.DagsterEventType.RUN_FAILURE,
    }
    for record in instance.all_logs(run_id, of_type=kinds):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            metadata.update({key: value.value for key, value in materialization.metadata.items()})
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            if data.user_failure_data is not None:
                metadata.update({key: value.value for key, value in data.user_failure_data.metadata.items()})
            error = error or step_error(data)
        elif error is None:
            error = first_line(record.message or "the run failed")
    return error, metadata


def step_error(data: Any) -> str:
    """The failure's own words: a `dg.Failure`'s description, else the innermost exception's message."""
    if data.user_failure_data is not None and data.user_failure_data.description:
        return first_line(data.user_failure_data.description)
    info = data.error
    while info is not None and info.cause is not None:
        info = info.cause
    return first_line(info.message) if info is not None else "the step failed"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {first_line(str(exc))}"


def render_summary(summary: GenerationSummary) -> str:
    """A line per partition (its run's status, counts, cost from the audit rows), then a line per problem."""
    lines = [
        f"{'partition':<22}{'run status':<15}{'generated':>10}{'skipped':>9}{'failed':>8}{'not started':>12}"
        f"{'cost':>10}  run"
    ]
    for p in summary.partitions:
        lines.append(
            f"{p.partition_key:<22}{p.status:<15}{p.generated:>10}{p.skipped:>9}{len(p.failures):>8}"
            f"{p.not_started:>12}{'$' + format(p.cost_usd + p.judge_cost_usd, '.2f'):>10}  {p.run_id}"
        )
    for p in summary.partitions:
        if p.held or p.retried:
            lines.append(
                f"REVIEW {p.partition_key}: {p.held} image(s) held for review, {p.retried} automatic quality retry(ies)"
            )
        if p.run_error:
            lines.append(f"RUN FAILED {p.partition_key}: {p.run_error} (details in the run's log)")
        if p.stopped:
            lines.append(f"STOPPED {p.partition_key}: {p.stopped}")
        if p.audit_error:
            lines.append(f"AUDIT UNREADABLE {p.partition_key}: {p.audit_error}; counts from the run's log")
    for who, reason in summary.failed:
        lines.append(f"FAILED {who}: {first_line(reason)}")
    if summary.interrupted:
        not_launched = sum(1 for p in summary.partitions if p.status == "not launched")
        lines.append(
            f"INTERRUPTED ({summary.interrupted}): {not_launched} partition(s) not launched; "
            "rerun with --missing-only to finish"
        )
    cost = sum((p.cost_usd for p in summary.partitions), Decimal("0"))
    judge = sum((p.judge_cost_usd for p in summary.partitions), Decimal("0"))
    cost_text = f"cost ${cost + judge:.2f}" + (f" (quality judge ${judge:.4f})" if judge else "")
    lines.append(f"wall time {summary.wall_time_s:.1f}s; {cost_text}; images in {summary.storage}")
    return "\n".join(lines)
