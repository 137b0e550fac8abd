"""One rate across processes: start times reserved in the database's call_pacing rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from portrait_pipeline.audit import db
from portrait_pipeline.audit.call_pacing import DatabaseSlotStore
from portrait_pipeline.audit.models import CallPacing
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, Resources, resources_from_env
from portrait_pipeline.errors import ConfigurationError
from portrait_pipeline.generation.pacing import Pacer, SlotStoreUnavailable, quota_id
from tests.servers import gemini as fake

REPO_ROOT = Path(__file__).resolve().parents[1]
EPSILON = 1e-6  # start times are epoch seconds in doubles: about 2e-7 s apart at today's dates


def gaps(starts: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


def run_together(commands: list[list[str]], env: dict[str, str], logs: Path) -> list[dict[str, Any]]:
    """Start every worker, wait until each has imported what it needs, let them all go at once; their figures."""
    logs.mkdir(exist_ok=True)
    workers = []
    for index, command in enumerate(commands):
        stderr = (logs / f"worker-{index}.log").open("w")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.pacing_worker", *command],
                cwd=REPO_ROOT,
                env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        )
    try:
        for index, worker in enumerate(workers):
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            assert line == "ready", (logs / f"worker-{index}.log").read_text()[-3000:]
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        figures = []
        for index, worker in enumerate(workers):
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0, (logs / f"worker-{index}.log").read_text()[-3000:]
            figures.append(json.loads(out.strip().splitlines()[-1]))
        return figures
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_two_processes_share_one_rate(database: DatabaseResource, tmp_path: Path) -> None:
    """Two processes (two threads each) reserve 30 start times each at 20 a second: merged, the 60 starts are
    at least 1/20 s apart and all distinct, and the two processes' starts interleave (they ran at once)."""
    rate = 20.0
    command = ["reserve", "--database-url", database.url, "--rate", str(rate), "--count", "30", "--threads", "2"]
    first, second = run_together([command, command], dict(os.environ), tmp_path / "logs")
    starts = sorted(first["starts"] + second["starts"])
    assert len(starts) == 60 and len(set(starts)) == 60
    assert min(gaps(starts)) >= 1 / rate - EPSILON, f"starts {min(gaps(starts)):.4f} s apart: the rate doubled"
    assert max(min(first["starts"]), min(second["starts"])) < min(max(first["starts"]), max(second["starts"]))


def test_a_reservation_waits_for_not_before_and_keeps_the_interval_after_it(database: DatabaseResource) -> None:
    store = DatabaseSlotStore(database.check(), "not-before")
    now = time.time()
    assert store.reserve(0.5, now + 30) == pytest.approx(now + 30, abs=EPSILON)
    assert store.reserve(0.5, now) == pytest.approx(now + 30.5, abs=EPSILON)  # the row's next free time wins
    assert store.reserve(0.5, now + 60) == pytest.approx(now + 60, abs=EPSILON)  # a later not_before wins


def test_a_429_pause_holds_with_the_shared_store(database: DatabaseResource) -> None:
    """RetryInfo's delay pauses this process's next start, and the rate halves, with the database reserving;
    the row then stays past the pause, so another process's next start comes after it too."""
    store = DatabaseSlotStore(database.check(), "paused")
    pacer = Pacer(10.0, store)
    ticket = pacer.reserve()
    throttled_at = time.time()
    pacer.throttled(ticket, 2.0)
    after = pacer.reserve()
    assert after.at >= throttled_at + 2.0 and after.rate_per_s == pytest.approx(5.0, rel=0.05)
    assert store.reserve(0.1, time.time()) >= after.at + 1 / after.rate_per_s - EPSILON


def test_quotas_are_apart_and_no_key_is_stored(database: DatabaseResource) -> None:
    """Two keys on one endpoint pace independently; the table holds digests, never a key (nor a part of one)."""
    keys = ("AIzaSyFirstProjectKey0123456789abcdefgh", "AIzaSySecondProjectKey123456789abcdefg")
    base_url = "http://127.0.0.1:9"
    stores = [GeminiResource(api_key=key, base_url=base_url, database=database).slot_store() for key in keys]
    assert stores[0] is not None and stores[1] is not None
    now = time.time()
    assert stores[0].reserve(1.0, now + 100) == pytest.approx(now + 100, abs=EPSILON)
    assert stores[1].reserve(1.0, now) == pytest.approx(now, abs=EPSILON)  # not held back by the first key's row
    assert quota_id(keys[0], base_url) != quota_id(keys[0], None)  # the same key elsewhere is another quota
    with database.session() as session:
        rows = session.execute(select(CallPacing.quota, CallPacing.next_at, CallPacing.updated_at)).all()
    assert sorted(row.quota for row in rows) == sorted(quota_id(key, base_url) for key in keys)
    stored = " ".join(str(value) for row in rows for value in row)
    assert not any(key[8:24] in stored for key in keys)
    assert GeminiResource(api_key=keys[0], database=database, shared_pacing="process").slot_store() is None


def test_an_unreachable_store_leaves_the_process_pacing_alone(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A database without the table (as one that is down): the store says where and why, and the pacer goes on
    at its own rate with one warning, instead of failing the calls."""
    store = DatabaseSlotStore(db.engine_for(database_url), "missing-table")
    with pytest.raises(SlotStoreUnavailable, match=r"call pacing in .*call_pacing"):
        store.reserve(0.1, time.time())
    pacer = Pacer(20.0, store)
    with caplog.at_level(logging.WARNING, logger="portrait_pipeline.generation.pacing"):
        starts = [pacer.reserve().at for _ in range(3)]
    assert gaps(starts) == pytest.approx([0.05] * 2)
    assert [record.message.count("pacing this process alone") for record in caplog.records] == [1]


def test_two_processes_at_the_servers_cap_get_almost_no_429s(database: DatabaseResource, tmp_path: Path) -> None:
    """Two processes, each with a GeminiClient at the server's whole rate of 20 a second, 30 calls each: every
    attempt of either starts at a time the database gave it, at least 1/20 s after any other, so together they
    keep that rate (429s at most 5% of the calls) and all 60 end with an image. Each on its own rate
    (GEMINI_SHARED_PACING=process) they send 40 a second; the server's one-second bucket and the halving on
    429s hide much of that from the 429 count in a run this short, not from the start times."""
    with fake.GeminiTestServer(latency_s=0.2, requests_per_second=20, image_size=(64, 80)) as server:
        command = ["calls", "--database-url", database.url, "--base-url", server.base_url, "--rpm", "1200"]
        results = run_together([[*command, "--count", "30"]] * 2, dict(os.environ), tmp_path / "logs")
        calls = len(server.requests)
        throttled = server.count_429
    assert [outcome for result in results for outcome in result["outcomes"]] == ["ok"] * 60
    starts = sorted(results[0]["starts"] + results[1]["starts"])
    assert len(starts) == calls, "an attempt started without a start time from the database"
    assert min(gaps(starts)) >= 1 / 20 - EPSILON
    assert throttled <= 0.05 * calls, f"{throttled} of {calls} calls answered 429"


def test_the_environments_gemini_paces_through_its_database(
    database: DatabaseResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the CLI, the definitions and `service.py` build: GEMINI_SHARED_PACING=database (the default) gives the
    client the store of DATABASE_URL; =process gives none; a wrong value stops with the variable named."""
    for name in [name for name in os.environ if name.startswith(("GEMINI_", "PORTRAIT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database.url)
    monkeypatch.setenv("GEMINI_API_KEY", "environment-key")
    monkeypatch.setenv("GEMINI_BASE_URL", "http://127.0.0.1:9")
    with Resources.from_env() as resources:
        store = resources.gemini.client().pacing.pacer.store
    assert store == DatabaseSlotStore(db.engine_for(database.url), quota_id("environment-key", "http://127.0.0.1:9"))
    monkeypatch.setenv("GEMINI_SHARED_PACING", "process")
    with Resources.from_env() as resources:
        assert resources.gemini.client().pacing.pacer.store is None
    monkeypatch.setenv("GEMINI_SHARED_PACING", "redis")
    with pytest.raises(ConfigurationError, match="GEMINI_SHARED_PACING='redis'"):
        resources_from_env()
