"""Pacing against the local Gemini server: no burst above the rate, 429s waited out, one pool across partitions."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline.audit import db
from portrait_pipeline.audit.models import Player, PlayerImageSnapshot
from portrait_pipeline.cli import launch
from portrait_pipeline.cohorts import Selection
from portrait_pipeline.defs.event_log import OneEngineSqliteEventLogStorage
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource, Resources
from portrait_pipeline.generation.gemini import GeminiClient
from portrait_pipeline.generation.pacing import CallSlots, Pacer
from portrait_pipeline.interrupts import Interruption, NotSent, StopRequest
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL
from tests.helpers import materialize_portraits, resources_for
from tests.servers import gemini as fake

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_IMAGE = (320, 400)


def most_in_one_second(starts: list[float]) -> int:
    """The most starts within any window [t, t + 1 s) (windows begin at a start: that is where maxima are)."""
    starts = sorted(starts)
    return max(sum(1 for s in starts[i:] if s < start + 1.0) for i, start in enumerate(starts))


def test_the_pacer_never_lets_more_than_the_rate_out_in_any_second() -> None:
    """30 calls at 10 a second, all ready at once: the server sees about 10 in any second, never 20.

    aiolimiter's AsyncLimiter(10, 1), which this replaced, lets 10 go at once and 10 more within that second
    (20 seen). The reserved start times are exactly 0.1 s apart (next test); what the server sees also carries
    each request's transit through a busy machine, hence the margin of 3.
    """
    with fake.GeminiTestServer(latency_s=0.0) as server:
        client = GeminiClient("pacing-key", base_url=server.base_url, requests_per_minute=600, max_concurrency=30)

        async def main() -> None:
            sdk = client.sdk
            await asyncio.gather(
                *(client.call(lambda: sdk.aio.models.generate_content(model="m", contents="x")) for _ in range(30))
            )

        asyncio.run(main())
        starts = [request.started for request in server.requests]
    assert len(starts) == 30
    assert most_in_one_second(starts) <= 13
    assert max(starts) - min(starts) >= 2.7  # 30 starts 0.1 s apart: the rate is kept, not undershot by much


def test_one_pacer_spaces_the_starts_of_several_event_loops() -> None:
    """Partition runs run in threads, each with its own event loop: they share one pacer and one set of slots."""
    pacer, slots = Pacer(20.0), CallSlots(3)
    starts: list[float] = []
    peak = 0

    async def calls() -> None:
        async def one() -> None:
            nonlocal peak
            async with slots:
                peak = max(peak, slots.in_use)
                starts.append((await pacer.wait()).at)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(10)))

    threads = [threading.Thread(target=asyncio.run, args=(calls(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 40 and peak == 3
    gaps = [later - earlier for earlier, later in zip(sorted(starts), sorted(starts)[1:], strict=False)]
    assert min(gaps) >= 0.05 - 1e-6  # one start per 1 / 20 s across the four loops


def test_a_stop_during_the_wait_for_a_call_slot_sends_nothing() -> None:
    """A call waiting for a slot when SIGTERM comes must not be sent once the slot frees (it would be billed after
    the stop): it raises NotSent, and the server sees only the call that was already in flight."""
    with fake.GeminiTestServer(latency_s=0.5) as server:
        client = GeminiClient("not-sent-key", base_url=server.base_url, requests_per_minute=60000, max_concurrency=1)
        stop = StopRequest()

        async def one() -> object:
            return await client.call(lambda: client.sdk.aio.models.generate_content(model="m", contents="x"))

        async def main() -> list[object]:
            async with Interruption(stop):
                calls = [asyncio.ensure_future(one()) for _ in range(3)]
                while server.in_flight == 0:
                    await asyncio.sleep(0.01)
                stop.request(signal.SIGTERM)  # as the handler does, from outside the loop's own bookkeeping
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(main())
    assert len(server.requests) == 1
    assert not isinstance(outcomes[0], BaseException)
    assert [type(outcome) for outcome in outcomes[1:]] == [NotSent, NotSent]
    assert "interrupted by SIGTERM: the call was not sent" in str(outcomes[1])


def test_a_429_storm_loses_no_player(tmp_path: Path) -> None:
    """The client set at 5x the server's real rate, with only 2 attempts per call: every player still gets an
    image, because 429s are waited out (slower rate, RetryInfo honoured) instead of using up attempts."""
    url = f"sqlite:///{tmp_path / 'storm.db'}"
    db.upgrade(url)
    add_players(url, "2032", 16)
    with fake.GeminiTestServer(latency_s=0.1, requests_per_second=4, image_size=SERVER_IMAGE) as server:
        gemini = GeminiResource(
            api_key="storm-key",
            base_url=server.base_url,
            max_concurrency=8,
            requests_per_minute=1200,
            max_attempts=2,
            retry_initial_s=0.05,
            retry_max_s=0.2,
        )
        storage = ImageStorageResource(local=True, local_dir=str(tmp_path / "images"))
        result = materialize_portraits(
            resources_for(DatabaseResource(url=url), storage, gemini), ("2032", "default"), {"image_size": "512"}
        )
        throttled = server.count_429
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert throttled > 0, "the server should have refused calls: the storm did not happen"
    assert (metadata["generated"].value, metadata["failed"].value) == (16, 0), metadata["failures"].value
    db.engine_for(url).dispose()


def add_players(url: str, draft_year: str, count: int, first: int = 0) -> None:
    with db.session_scope(db.engine_for(url)) as session:
        for index in range(first, first + count):
            session.add(
                Player(
                    slug=f"pacer-{draft_year}-{index:03d}",
                    display_name=f"Pacer Tester {draft_year} {index:03d}",
                    first_name="Pacer",
                    last_name=f"Tester {index:03d}",
                    position="SG",
                    draft_year=int(draft_year),
                )
            )


@pytest.fixture
def cli_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Resources, fake.GeminiTestServer]]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    db.upgrade(url)
    for year in ("2033", "2034", "2035"):
        add_players(url, year, 4)
    # 2 s calls: a partition run's start-up (about a second of CPU on a loaded 2-core machine) stays well inside
    # the calls of the runs already started, so overlapping runs show as more than 4 calls in flight.
    with fake.GeminiTestServer(latency_s=2.0, image_size=SERVER_IMAGE) as server:
        for key, value in {
            "DATABASE_URL": url,
            "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
            "GEMINI_API_KEY": "partition-pool-key",
            "GEMINI_BASE_URL": server.base_url,
            "GEMINI_MAX_CONCURRENCY": "12",
            "GEMINI_REQUESTS_PER_MINUTE": "60000",
            "PORTRAIT_QUALITY_JUDGE": "false",  # the image model's pool is under test, not the judge's
        }.items():
            monkeypatch.setenv(key, value)
        with Resources.from_env() as resources:
            yield resources, server
    db.engine_for(url).dispose()


def test_a_selection_across_partitions_shares_one_pool_of_calls(
    cli_resources: tuple[Resources, fake.GeminiTestServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three draft years of 4 players each, 12 calls allowed in flight: the CLI's runs overlap, so the server
    sees more than one partition's 4 players at once; each partition keeps its own run, snapshot and
    materialization, as when they ran one after another."""
    resources, server = cli_resources
    settings = {"missing_only": False, "image_size": "512", "fetch_likeness": False, "likeness_url": None}
    plan = launch.plan_generation(resources, Selection(all_players=True), ["default"], {**settings}, None)
    assert len(plan.partitions) == 3
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.dev.yaml", home / "dagster.yaml")  # the CLI's instance, with its pool limit
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # where the dev instance keeps its event log
    with dg.DagsterInstance.from_config(str(home)) as instance:
        summary = launch.run_generation(instance, resources, plan, interactive=False)
        records = instance.fetch_materializations(dg.AssetKey("player_portraits"), limit=100).records
        assert isinstance(instance.event_log_storage, OneEngineSqliteEventLogStorage)  # what the events went through
        starts = sorted(run.start_time or 0.0 for run in instance.get_run_records())
    assert [p.generated for p in summary.partitions] == [4, 4, 4] and not summary.failed
    # The runs start one at a time (LaunchGate): the second once the first has asked for its first call slot, just
    # before that call reached the server. Started together, all three began before any call (each run's start-up
    # is tenths of a second); 0.1 s leaves room for the time between the slot and the request's arrival.
    epoch_of_monotonic = time.time() - time.monotonic()  # the server records time.monotonic(), Dagster time.time()
    first_call = min(r.started for r in server.requests if r.kind == "generate_content") + epoch_of_monotonic
    assert starts[1] > first_call - 0.1, f"second run started {first_call - starts[1]:.2f} s before the first call"
    peak = server.peak_in_flight_of(DEFAULT_IMAGE_MODEL)
    assert peak > 4, f"peak in flight {peak}: the partitions ran one at a time"
    assert peak <= 12
    assert sorted(str(record.partition_key) for record in records) == [
        "2033|default",
        "2034|default",
        "2035|default",
    ]
    with resources.database.session() as session:
        snapshots = session.scalars(select(PlayerImageSnapshot)).all()
        assert sorted((s.draft_year, s.success_count) for s in snapshots) == [(2033, 4), (2034, 4), (2035, 4)]
        assert len({s.dagster_run_id for s in snapshots}) == 3


class _Runs:
    """Partition runs in threads, each launched through the gate: whether it was launched, and when."""

    def __init__(self, gate: launch.LaunchGate, stop: StopRequest) -> None:
        self.gate, self.stop = gate, stop
        self.launched: dict[str, threading.Event] = {}
        self.refused: set[str] = set()
        self.finish = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, name: str, call: CallSlots | None = None, when: threading.Event | None = None) -> None:
        """A run that, once launched (and `when` is set), asks `call` for a slot, then stays until `finish`."""
        self.launched[name] = threading.Event()

        def run() -> None:
            with self.gate.turn(self.stop) as launched:
                if not launched:
                    self.refused.add(name)
                    return
                self.launched[name].set()
                if call is not None and (when is None or when.wait(10)):
                    asyncio.run(take_and_give_back(call))
                self.finish.wait(10)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def end(self) -> None:
        self.finish.set()
        for thread in self.threads:
            thread.join(10)


async def take_and_give_back(slots: CallSlots) -> None:
    async with slots:
        pass


def test_the_launch_gate_starts_a_run_once_the_one_before_it_asks_for_a_call_slot() -> None:
    slots = CallSlots(4)
    runs = _Runs(launch.LaunchGate(slots, patience_s=30), StopRequest())
    first_calls = threading.Event()
    try:
        runs.start("first", call=slots, when=first_calls)
        assert runs.launched["first"].wait(5)
        runs.start("second")
        time.sleep(0.3)
        assert not runs.launched["second"].is_set(), "launched while the run before it was still starting"
        other = threading.Thread(target=asyncio.run, args=(take_and_give_back(slots),))  # not the first run's
        other.start()
        other.join(5)
        time.sleep(0.1)
        assert not runs.launched["second"].is_set(), "a call of another context opened the gate"
        first_calls.set()  # from its own event loop, in the context the gate gave its thread
        assert runs.launched["second"].wait(5), "the first run's call did not open the gate"
        assert not runs.finish.is_set()  # ... while the first run was still running
    finally:
        runs.end()


def test_the_launch_gate_holds_runs_while_a_slot_is_owed_to_every_waiting_call() -> None:
    slots = CallSlots(1)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    stop = StopRequest()
    runs = _Runs(launch.LaunchGate(slots, patience_s=30), stop)
    try:
        asyncio.run_coroutine_threadsafe(slots.acquire(), loop).result(5)  # in flight
        queued = asyncio.run_coroutine_threadsafe(slots.acquire(), loop)  # waiting: as many as there are slots
        while slots.waiting < 1:
            time.sleep(0.01)
        runs.start("first")
        time.sleep(0.3)
        assert not runs.launched["first"].is_set(), "launched with a full queue of calls"
        slots.release()  # the call in flight answers: the waiting one takes its slot, the queue has room
        queued.result(5)
        assert runs.launched["first"].wait(5)
        queued = asyncio.run_coroutine_threadsafe(slots.acquire(), loop)  # the queue is full again
        while slots.waiting < 1:
            time.sleep(0.01)
        runs.start("second")
        time.sleep(0.3)
        stop.request(signal.SIGTERM)
        runs.threads[1].join(5)
        assert runs.refused == {"second"}, "a stop while waiting for a turn launches nothing"
    finally:
        runs.end()
        slots.release()
        queued.result(5)
        loop.call_soon_threadsafe(loop.stop)


def test_a_run_that_makes_no_call_holds_the_next_one_only_for_the_patience() -> None:
    runs = _Runs(launch.LaunchGate(CallSlots(4), patience_s=0.5), StopRequest())
    try:
        runs.start("first")
        assert runs.launched["first"].wait(5)
        started = time.monotonic()
        runs.start("second")
        assert runs.launched["second"].wait(5)
        assert time.monotonic() - started >= 0.45
    finally:
        runs.end()


def test_without_paced_calls_the_gate_launches_every_run_at_once() -> None:
    runs = _Runs(launch.LaunchGate(None), StopRequest())
    try:
        for name in ("first", "second", "third"):
            runs.start(name)
        for name in ("first", "second", "third"):
            assert runs.launched[name].wait(2)
    finally:
        runs.end()
