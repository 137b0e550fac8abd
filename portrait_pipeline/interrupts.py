"""Stopping a run on SIGINT / SIGTERM: no new calls, a grace period for the calls in flight, a second signal ends it.

Why the calls in flight get a grace period instead of being cancelled at once: their requests were sent, and
Gemini's documentation does not say whether a request the client abandons is billed (it names the outcome,
499 CANCELLED, "the client cancelled the request", and nothing more: ai.google.dev/gemini-api/docs/troubleshooting,
read 2026-10). The model keeps working on a request it has received, so the safe reading is "it may be billed":
waiting a few seconds for the answer turns a likely charge into a stored image. When the grace period is over (or
a second signal comes), what is still at Gemini is cancelled; its audit row says it may be billed and carries the
image's price, so the run's cost errs high, never low.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar, Token
from types import FrameType
from typing import TypeVar

from portrait_pipeline.errors import PortraitPipelineError

T = TypeVar("T")

DEFAULT_GRACE_S = 10.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)
CALL_CANCELLED = "interrupted: call cancelled before Gemini answered (the request was sent: it may be billed)"
NOT_STORED = "interrupted: answer received but not stored"


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
    return 128 + signum


class Interrupted(PortraitPipelineError):
    """A player's attempt was cut short by a stop request; its audit row records why."""


class NotSent(Interrupted):
    """A stop request came before the call was sent: nothing was billed, so the player counts as not started."""


# The stop request of the batch whose tasks run in this context (set by `Interruption`, inherited by its tasks).
_current: ContextVar[StopRequest | None] = ContextVar("portrait_pipeline_stop_request", default=None)


def check_before_sending() -> None:
    """Raise `NotSent` if a stop was requested: the last check before a request leaves, after its wait for a call
    slot and a start time (a stop can come during that wait, which the batch's own loop cannot see)."""
    request = _current.get()
    if request is not None and request.requested:
        raise NotSent(f"{request.reason}: the call was not sent")


class StopRequest:
    """Signals received by this process. Process-wide, as signals are: a handler in the main thread sets it, and
    the batch's event loop (in whichever thread runs it) hears of it through `subscribe`."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._listeners: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return bool(self.signals)

    @property
    def forced(self) -> bool:
        """A second signal: end now, without waiting for the calls in flight."""
        return len(self.signals) >= 2

    @property
    def signum(self) -> int | None:
        return self.signals[0] if self.signals else None

    @property
    def reason(self) -> str:
        name = signal.Signals(self.signum).name if self.signum is not None else "a stop request"
        return f"interrupted by {name}"

    def request(self, signum: int) -> None:
        self.signals.append(signum)
        for listener in list(self._listeners):
            listener()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler; a third signal gets the default action (the process ends at once)."""
        self.request(signum)
        if self.forced:
            for each in SIGNALS:
                signal.signal(each, signal.SIG_DFL)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` on every signal (from the signal handler: it must only hand over); returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


_installed: StopRequest | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM become a stop request while the block runs; the previous handlers come back after.

    An outer block's request is shared (the CLI installs the handlers and runs Dagster in a worker thread, where
    the asset asks again). Off the main thread with no outer block, no handler can be installed: the request
    returned is never set. Inside a Dagster step the block replaces Dagster's own handlers (which would raise
    into the event loop and lose the answers in flight) and restores them afterwards.
    """
    global _installed
    if _installed is not None:
        yield _installed
        return
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    request = StopRequest()
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, request.handle)
    _installed = request
    try:
        yield request
    finally:
        _installed = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Interruption:
    """A stop request as a batch's event loop sees it: `stopping` once a signal came (start nothing new),
    `aborted` once the grace period is over or a second signal came (cancel what is still waiting)."""

    def __init__(self, request: StopRequest | None, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.request = request or StopRequest()
        self.grace_s = grace_s
        self.stopping = asyncio.Event()
        self.aborted = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._token: Token[StopRequest | None] | None = None

    async def __aenter__(self) -> Interruption:
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
                loop.call_soon_threadsafe(self._update)

        self._unsubscribe = self.request.subscribe(wake)
        self._token = _current.set(self.request)
        self._update()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._timer is not None:
            self._timer.cancel()

    def _update(self) -> None:
        if self.request.requested and not self.stopping.is_set():
            self.stopping.set()
            self._timer = asyncio.get_running_loop().call_later(self.grace_s, self.aborted.set)
        if self.request.forced:
            self.aborted.set()

    async def unless_aborted(self, work: Awaitable[T], reason: str) -> T:
        """The result of `work`, or `Interrupted(reason)` if the run is aborted first (the work is cancelled).

        Work that finished at the moment of the abort still counts: a paid answer is never thrown away.
        """
        task = asyncio.ensure_future(work)
        try:
            if not self.aborted.is_set():
                waiter = asyncio.ensure_future(self.aborted.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        except BaseException:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let a cancelled HTTP request close its connection
        if not task.cancelled():
            return task.result()
        raise Interrupted(reason)


async def unless_aborted(interruption: Interruption | None, work: Awaitable[T], reason: str) -> T:
    """`work` itself when nothing can interrupt it."""
    return await work if interruption is None else await interruption.unless_aborted(work, reason)
