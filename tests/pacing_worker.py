"""A process that takes Gemini start times from the shared call pacing, for tests of one rate across processes.

    python -m tests.pacing_worker reserve --database-url URL --rate 40 --count 30
    python -m tests.pacing_worker calls --database-url URL --base-url URL --rpm 1200 --count 30

It imports what it needs, prints "ready", waits for a line on stdin (so that two workers start together), then
prints its figures as one JSON line: `reserve` the start times it reserved (time.time()), each slept until as a
pacer does; `calls` how each of `count` image calls (all at once) ended and the start times their attempts were
given, through a GeminiClient whose store is the database's (as `GeminiResource.client()` builds it; without
Dagster, which takes seconds to import).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portrait_pipeline.generation.pacing import SlotStore

REPO_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "pacing-worker-key"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def reserve(database_url: str, quota: str, rate: float, count: int, threads: int) -> dict[str, Any]:
    """`count` start times from `threads` threads, each reserving its next one once its last one has come."""
    from portrait_pipeline.audit.call_pacing import DatabaseSlotStore
    from portrait_pipeline.audit.db import engine_for

    store = DatabaseSlotStore(engine_for(database_url), quota)
    starts: list[float] = []
    lock = threading.Lock()

    def one_thread(share: int) -> None:
        for _ in range(share):
            at = store.reserve(1.0 / rate, time.time())
            with lock:
                starts.append(at)
            time.sleep(max(0.0, at - time.time()))

    ready_then_wait()
    workers = [threading.Thread(target=one_thread, args=(count // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"starts": starts}


def calls(database_url: str, base_url: str, rpm: int, concurrency: int, count: int) -> dict[str, Any]:
    """`count` image calls at once through one GeminiClient paced by the database: how each one ended."""
    from portrait_pipeline.audit.call_pacing import DatabaseSlotStore
    from portrait_pipeline.audit.db import engine_for
    from portrait_pipeline.errors import GenerationFailed
    from portrait_pipeline.generation.gemini import GeminiClient
    from portrait_pipeline.generation.pacing import quota_id

    store = Recorded(DatabaseSlotStore(engine_for(database_url), quota_id(API_KEY, base_url)))
    client = GeminiClient(API_KEY, base_url=base_url, requests_per_minute=rpm, max_concurrency=concurrency, store=store)
    ready_then_wait()

    async def one() -> str:
        try:
            await client.call(lambda: client.sdk.aio.models.generate_content(model="image-model", contents="portrait"))
        except GenerationFailed as exc:
            return f"failed: {exc}"
        return "ok"

    async def every() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(count)))

    return {"outcomes": asyncio.run(every()), "starts": store.starts}


class Recorded:
    """A store that notes the start times it hands out (what the server cannot tell apart from transit delays)."""

    def __init__(self, store: SlotStore) -> None:
        self.store = store
        self.starts: list[float] = []

    def reserve(self, interval_s: float, not_before: float) -> float:
        at = self.store.reserve(interval_s, not_before)
        self.starts.append(at)
        return at


def ready_then_wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["reserve", "calls"])
    parser.add_argument("--database-url")
    parser.add_argument("--quota", default="test-quota")
    parser.add_argument("--rate", type=float, default=40.0, help="starts per second (reserve)")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="threads reserving at once (reserve)")
    parser.add_argument("--base-url", help="the GeminiTestServer's base URL (calls)")
    parser.add_argument("--rpm", type=int, default=1200, help="requests per minute (calls)")
    parser.add_argument("--max-concurrency", type=int, default=6, help="calls in flight (calls)")
    args = parser.parse_args()
    if args.mode == "reserve":
        figures = reserve(args.database_url, args.quota, args.rate, args.count, args.threads)
    else:
        figures = calls(args.database_url, args.base_url, args.rpm, args.max_concurrency, args.count)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
