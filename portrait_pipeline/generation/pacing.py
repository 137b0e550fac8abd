"""Pacing Gemini calls: one smooth, adaptive rate and one pool of call slots for every run of a process.

Why not aiolimiter: `AsyncLimiter(rate, 1)` is a leaky bucket one second deep, so it lets `rate` calls out at
once and then `rate` per second: up to twice the rate within one second, which a quota counted per second
answers with 429s. `Pacer` hands out start times one `1 / rate` apart instead (never a burst above the rate).

Why shared: a selection spans many partitions, and the CLI runs them at once in one process (one Dagster run
each). The quota is the project's, not a run's, so every run of the process takes its start times from one
`Pacer` and its calls in flight from one `CallSlots`, found by `shared_pacing` under the quota's identity.
Runs in other processes (the daemon's, a second CLI) take their start times from the same `SlotStore` (the app's
database, `audit/call_pacing.py`): one rate for every process. Their 429 handling (below) stays per process.

Why adaptive: a 429 means the server's rate is below ours (a lower tier, another client on the project). The
rate halves (at most once per round of calls: 429s for calls started at the old rate do not halve it again),
every start waits out the server's RetryInfo delay, and the rate grows back by a small step per second.
Gemini answers 429 RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail when a rate limit is exceeded:
https://ai.google.dev/gemini-api/docs/rate-limits and https://ai.google.dev/gemini-api/docs/troubleshooting
(read 2026-11-29, see /tmp/research/gemini.md section 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

DECREASE_FACTOR = 0.5  # multiplicative decrease on a 429
RECOVERY_S = 20.0  # additive increase: the full configured rate regained from zero in this many seconds
DEFAULT_PAUSE_S = 1.0  # a 429 without RetryInfo pauses new starts this long
MIN_RATE_SHARE = 1 / 64  # the rate never drops below this share of the configured one
QUOTA_ID_CHARS = 32  # hex digits of the digest that names a quota: 128 bits tell quotas apart

log = logging.getLogger(__name__)


def quota_id(api_key: str, base_url: str | None, model: str = "") -> str:
    """The name of one quota (a key at an endpoint; `model` for a model paced on its own), computed in memory: it
    tells quotas apart and is safe to store, since a digest of a key cannot be turned back into the key (Gemini keys
    are long random strings). Gemini's limits are per model (ai.google.dev/gemini-api/docs/rate-limits, read
    2026-11-29), so the quality judge's Flash calls get a quota of their own, not the image model's."""
    endpoint = (base_url or "").rstrip("/")
    text = f"portrait-pipeline call pacing\n{endpoint}\n{api_key}" + (f"\n{model}" if model else "")
    return hashlib.sha256(text.encode()).hexdigest()[:QUOTA_ID_CHARS]


class SlotStoreUnavailable(Exception):
    """The shared store could not be asked (database down or locked): the process paces alone meanwhile."""


class SlotStore(Protocol):
    """Start times shared between processes: each reservation is the next free one, `interval_s` after the last."""

    def reserve(self, interval_s: float, not_before: float) -> float:
        """The start time (time.time()) reserved for one call, no earlier than `not_before`; raises
        SlotStoreUnavailable when the store cannot be asked."""
        ...


@dataclass(frozen=True)
class Ticket:
    """One admitted start: its time (time.time()) and the rate it was admitted at."""

    at: float
    rate_per_s: float


class Pacer:
    """Start times at most `rate` per second, evenly spaced, adapted to 429s; thread-safe, any event loop."""

    def __init__(self, rate_per_s: float, store: SlotStore | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate {rate_per_s}: use a positive number of requests per second")
        self.ceiling = rate_per_s
        self.rate = rate_per_s
        self.store = store
        self.throttled_count = 0
        self._lock = threading.Lock()
        self._next = 0.0  # the next free start time, time.time()
        self._paused_until = 0.0
        self._decreased_at = 0.0
        self._changed_at = time.time()
        self._store_failed = False

    def reserve(self) -> Ticket:
        """The next start time, reserved: callers sleep until it (see `wait`).

        With a store the time comes from it (every process's reservations, one `interval` apart), asked outside
        the lock so that a database round trip never holds up the process's other reservations (the store is
        atomic itself); `_next` still tracks this process's latest one, which `throttled` needs and which paces
        alone if the store fails.
        """
        with self._lock:
            now = time.time()
            self._recover(now)
            rate = self.rate
            not_before = max(now, self._paused_until)
        at = self._reserve_shared(1.0 / rate, not_before) if self.store is not None else None
        with self._lock:
            if at is None:
                at = max(not_before, self._next)
            self._next = max(self._next, at + 1.0 / rate)
            return Ticket(at, rate)

    def _reserve_shared(self, interval: float, not_before: float) -> float | None:
        """The store's start time; None (and one warning until it answers again) when it cannot be asked."""
        assert self.store is not None
        try:
            at = self.store.reserve(interval, not_before)
        except SlotStoreUnavailable as exc:
            if not self._store_failed:
                log.warning("%s: pacing this process alone until it answers again", exc)
            self._store_failed = True
            return None
        if self._store_failed:
            log.warning("the shared call pacing answers again: pacing with the other processes")
        self._store_failed = False
        return at

    async def wait(self) -> Ticket:
        """Sleep until this call's start time; the shared store, if any, is asked from a worker thread."""
        ticket = await asyncio.to_thread(self.reserve) if self.store is not None else self.reserve()
        delay = ticket.at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return ticket

    def throttled(self, ticket: Ticket, retry_after_s: float | None) -> None:
        """A call started at `ticket` got a 429: wait out RetryInfo; halve the rate once per round of calls."""
        with self._lock:
            now = time.time()
            self.throttled_count += 1
            self._paused_until = max(self._paused_until, now + (retry_after_s or DEFAULT_PAUSE_S))
            # Only a call reserved after the last decrease says the new rate is still too high; calls reserved
            # before it (start times up to the then next free one) were paced at the old rate.
            if ticket.at >= self._decreased_at:
                self._recover(now)
                self.rate = max(self.ceiling * MIN_RATE_SHARE, self.rate * DECREASE_FACTOR)
                self._decreased_at = max(now, self._next)
                self._changed_at = now

    def _recover(self, now: float) -> None:
        """Additive increase: back toward the configured rate by a fixed step per second (lock held)."""
        if self.rate < self.ceiling:
            self.rate = min(self.ceiling, self.rate + self.ceiling * (now - self._changed_at) / RECOVERY_S)
        self._changed_at = now


# Told when a call asks for a slot, in the context that set it: the CLI's launch gate learns that the partition run
# it started (in that thread: the run's event loop inherits the context) has begun its calls (`cli/launch.py`).
calls_queued: ContextVar[Callable[[], None] | None] = ContextVar("portrait_pipeline_calls_queued", default=None)


class CallSlots:
    """At most `size` calls in flight, for coroutines of any event loop in any thread (asyncio.Semaphore's are
    bound to one loop, and the CLI's partition runs each have their own)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_concurrency {size}: use at least 1")
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.size - self._free

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        with self._lock:
            return len(self._waiters)

    async def acquire(self) -> None:
        notify = calls_queued.get()
        if notify is not None:
            notify()
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                if (loop, waiter) in self._waiters:
                    self._waiters.remove((loop, waiter))
                    raise
            if not waiter.cancelled():  # the slot was handed over just before the cancel: pass it on
                self.release()
            raise  # (a cancelled waiter's slot is passed on by `_grant`)

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._grant, waiter)
                    return
                except RuntimeError:  # that loop has closed: its waiter is gone
                    continue
            self._free += 1

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        """Runs in the waiter's loop: it takes the slot, or gives it back if it stopped waiting meanwhile."""
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True)
class Pacing:
    """What every call to one quota shares within a process."""

    pacer: Pacer
    slots: CallSlots


_shared: dict[tuple[str, str, str, SlotStore | None], Pacing] = {}
_shared_lock = threading.Lock()


def shared_pacing(
    api_key: str,
    base_url: str | None,
    requests_per_minute: int,
    max_concurrency: int,
    store: SlotStore | None = None,
    model: str = "",
) -> Pacing:
    """The process's pacing for one quota: the same key and endpoint (and settings) get the same pacer and slots.

    The key is hashed in memory only (`quota_id`), to tell projects apart; it is never stored or shown. Runs with
    equal stores (the same database and quota) share one pacer; a store must therefore be hashable.
    """
    key = (quota_id(api_key, base_url, model), str(requests_per_minute), str(max_concurrency), store)
    with _shared_lock:
        pacing = _shared.get(key)
        if pacing is None:
            pacing = Pacing(Pacer(requests_per_minute / 60, store), CallSlots(max_concurrency))
            _shared[key] = pacing
        return pacing
