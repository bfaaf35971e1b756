"""Flows in asyncio mode: each flow is an asyncio Task, so that it may await httpx (or anyio,
or asyncio) beside its user.* steps; the slower path, taken only by a module that asks for it
(flows/loader.py: it imports httpx, anyio or asyncio, or marks a flow @flow(asyncio=True)).

The flow's coroutine is its Task's: what it awaits besides user.* calls (an asyncio future, a
bare yield) goes to the Task as in any asyncio program, so httpx, anyio and sniffio see an
ordinary Task. The user it is handed is an AioUser, whose steps and think times are asyncio
awaitables: a step is handed to the engine (FlowEngine.submit) and awaited as a future that
the driver resolves with the Response when the engine completes it; a think waits in the
driver's timer heap. So a flow may also run its steps concurrently (asyncio.gather) or from
Tasks it starts.

The driver's loop is itself a coroutine on the same event loop: it polls the engine with a zero
timeout and sleeps on the engine's epoll fd (loop.add_reader), a timer for the schedule's
next need, and a kick from any flow that submitted a step, began a think or ended. The
engine's own coalescing of wake-ups (load.timer_resolution) does not apply here.

httpx requests: `httpx.AsyncClient.send` is wrapped, in the worker process only, so a client
made anywhere (in the flow, per user, at module level) is recorded. A request sent from inside
a flow is recorded as a step (FlowEngine.record_step) under `extensions={"name": ...}`, else
"METHOD /path" (the target's path prefix taken off), in the flow's stage: latency from the
call to the body read (a streamed response: to its close), outcome by status class or by the
transport error's kind. Each hop of a redirect or an auth exchange (response.history) is
recorded too, timed by httpx's own `elapsed`.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

from loadforge.flows.driver import O_2XX, O_PROTOCOL, Driver, FlowRun, response_of
from loadforge.flows.user import ERRORS, FlowUsageError, Response, Step, User, duration_ns

O_CONNECT, O_TIMEOUT, O_RESET = 5, 6, 7


class _AioRun(FlowRun):
    __slots__ = ("task", "steps", "driver")

    def __init__(self, driver: AsyncDriver, *args: Any) -> None:
        super().__init__(*args)
        self.driver = driver
        self.task: asyncio.Task[None] | None = None
        self.steps = 0               # engine steps under way


class _Call:
    """One engine step (or think) of a flow under way: what Driver.submit reads of a FlowRun,
    and the future its awaiter waits on."""

    __slots__ = ("run", "stage", "step", "step_at", "user", "fut")

    def __init__(self, run: _AioRun, step: Any, fut: asyncio.Future[Any]) -> None:
        self.run = run
        self.stage = run.stage
        self.user = run.user
        self.step = step
        self.step_at = 0
        self.fut = fut


# The flow whose Task (or a Task it started) is running: its steps and httpx requests are its.
CURRENT: contextvars.ContextVar[_AioRun | None] = contextvars.ContextVar("loadforge_flow",
                                                                         default=None)


def _current() -> _AioRun:
    run = CURRENT.get()
    if run is None:
        raise FlowUsageError("a user.* call was awaited outside a flow")
    return run


class _AioStep(Step):
    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, Response]:
        run = _current()
        return run.driver.step(run, self).__await__()


class _AioThink:
    __slots__ = ("ns",)

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __await__(self) -> Generator[Any, Any, None]:
        run = _current()
        return run.driver.think(run, self.ns).__await__()


class AioUser(User):
    """User, with steps and think times awaitable from asyncio Tasks."""

    __slots__ = ()

    def request(self, *args: Any, **kw: Any) -> _AioStep:
        step = User.request(self, *args, **kw)
        return _AioStep(step.data, step.head, step.name)

    def think(self, duration: Any) -> _AioThink:  # type: ignore[override]
        return _AioThink(duration_ns(duration))


def status_outcome(status: int) -> int:
    """The engine's outcome of a status (engine/http1.pxi status_outcome)."""
    if status < 200:
        return 0
    if status < 300:
        return 1
    if status < 400:
        return 2
    if status < 500:
        return 3
    return 4


class AsyncDriver(Driver):
    """Driver, with each flow an asyncio Task (see the module's docstring)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake: asyncio.Future[None] | None = None
        self.runs: set[_AioRun] = set()       # flows under way (asyncio holds Tasks weakly)
        host, prefix, _ = self.base
        self.prefix = prefix
        self.target = host.lower()

    def kick(self) -> None:
        """Wake the driver's loop: the engine's fd is readable, a timer fired, or a flow
        changed what the loop waits for."""
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _user(self, index: int, closed: bool) -> User | None:
        user = super()._user(index, closed)
        if user is None:
            return None
        aio = AioUser(self.base, self.checks, index, self.base_url)
        aio.rows, aio.row = user.rows, user.row
        return aio

    def begin(self, coro: Any, flow: int, stage: int, intended: int, now: int, user: User,
              closed: bool) -> None:
        """A flow just started becomes a Task of its own."""
        run = _AioRun(self, coro, flow, stage, intended, now, user, closed)
        self.runs.add(run)
        assert self.loop is not None
        run.task = self.loop.create_task(_flow_task(self, run))

    # -- what a flow's awaits ask for ---------------------------------------------------------

    def step(self, run: _AioRun, step: Step) -> asyncio.Future[Any]:
        assert self.loop is not None
        fut = self.loop.create_future()
        call = _Call(run, step, fut)
        call.step_at = now = time.monotonic_ns()
        run.steps += 1
        if not self.submit_call(call, now):
            self.waiting.append(call)  # type: ignore[arg-type]
        self.kick()
        return fut

    def submit_call(self, call: _Call, now: int) -> bool:
        """Driver.submit, for a _Call."""
        step = call.step
        self.token += 1
        token = self.token
        self.by_token[token] = call  # type: ignore[assignment]
        if self.engine.submit(step.data, step.head, self.step_index.get(step.name, self.other),
                              call.stage, call.step_at, now, token) < 0:
            del self.by_token[token]
            return False
        return True

    def think(self, run: _AioRun, ns: int) -> asyncio.Future[Any]:
        assert self.loop is not None
        fut = self.loop.create_future()
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic_ns() + ns, self.seq, _Call(run, None, fut)))
        self.kick()
        return fut

    def ended(self, run: _AioRun, outcome: int | None) -> None:
        """The flow's Task is done: recorded with `outcome`, or, None, cut at the grace's end
        (not recorded, as a flow still thinking then)."""
        self.runs.discard(run)
        if outcome is None:
            self.active -= 1
        else:
            self.end(run, outcome, time.monotonic_ns())
        self.kick()

    # -- httpx requests -----------------------------------------------------------------------

    def request_index(self, request: Any) -> int:
        name = request.extensions.get("name")
        if not isinstance(name, str):
            url = request.url
            path = url.path or "/"
            if self.prefix and path.startswith(self.prefix) \
                    and url.netloc.decode("ascii", "replace").lower() == self.target:
                path = path[len(self.prefix):] or "/"
            name = f"{request.method} {path}"
        return self.step_index.get(name, self.other)

    def record_response(self, run: _AioRun, response: Any, start: int, end: int) -> None:
        record = self.engine.record_step
        for hop in response.history:
            try:
                hop_ns = int(hop.elapsed.total_seconds() * 1e9)
            except RuntimeError:     # a hop httpx did not read to its end: untimed
                hop_ns = 0
            record(self.request_index(hop.request), run.stage,
                   status_outcome(hop.status_code), end - hop_ns, end)
            start += hop_ns
        record(self.request_index(response.request), run.stage,
               status_outcome(response.status_code), min(start, end), end)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, t0: int, on_interval: Callable[[bytes, int, int], None],
            preconnect: int = 0) -> None:
        uninstall = install_httpx(self)
        try:
            asyncio.run(self.main(t0, on_interval, preconnect))
        finally:
            uninstall()

    async def main(self, t0: int, on_interval: Callable[[bytes, int, int], None],
                   preconnect: int) -> None:
        from loadforge.flows.driver import flows_trailer

        engine = self.engine
        section = self.flows_section
        self.loop = loop = asyncio.get_running_loop()

        def interval(payload: bytes, open_conns: int, in_flight: int) -> None:
            on_interval(payload + flows_trailer(section()), open_conns, in_flight)

        engine.start(t0, interval, preconnect)
        fd = engine.fileno()
        loop.add_reader(fd, self.kick)
        grace_end = -1
        hard_end = -1
        try:
            while True:
                done, now = engine.poll(0, 0)
                by_token = self.by_token
                for token, outcome, status, raw, end in done:
                    call: _Call = by_token.pop(token)  # type: ignore[assignment]
                    call.run.steps -= 1
                    fut = call.fut
                    if fut.done():
                        continue        # its awaiter was cancelled; the engine recorded it
                    step = call.step
                    if outcome >= 5:
                        fut.set_exception(ERRORS[outcome](
                            f"step {step.name}: {ERRORS[outcome].__name__}"))
                        continue
                    fut.set_result(response_of(call, status, raw, end))
                st = self.admit(now)
                timers = self.timers
                while timers and timers[0][0] <= now:
                    _, _, what = heapq.heappop(timers)
                    if type(what) is _Call:
                        if not what.fut.done():
                            what.fut.set_result(None)
                    else:
                        self.start_closed(what[0], what[1], now)
                waiting = self.waiting
                while waiting:
                    if not self.submit_call(waiting[0], now):  # type: ignore[arg-type]
                        break
                    waiting.popleft()
                if st is None and grace_end < 0:
                    grace_end = now + self.grace_ns
                    # A flow waiting on something else (httpx, asyncio.sleep) gets one more
                    # load.timeout: httpx's own timeouts (5 s by default) end its requests.
                    hard_end = grace_end + self.grace_ns
                if st is None and timers and (now >= grace_end or timers[0][0] > grace_end):
                    # As Driver.run: a flow still thinking at the grace's end is ended,
                    # unrecorded (its Task is cancelled; _flow_task counts it off).
                    for _, _, what in timers:
                        if type(what) is _Call and what.run.task is not None:
                            what.run.task.cancel()
                    timers.clear()
                if st is None and now >= hard_end:
                    for run in self.runs:
                        if run.steps == 0 and run.task is not None:
                            run.task.cancel()
                    hard_end = now + self.grace_ns
                if st is None and self.active == 0:
                    break
                wake = engine.wake_at(now)
                if timers and timers[0][0] < wake:
                    wake = timers[0][0]
                if st is None and timers and grace_end < wake:
                    wake = grace_end
                if st is None and hard_end < wake:
                    wake = hard_end
                self.wake = fut = loop.create_future()
                handle = loop.call_later(max(wake - time.monotonic_ns(), 0) / 1e9, self.kick)
                try:
                    await fut
                finally:
                    handle.cancel()
                    self.wake = None
        finally:
            loop.remove_reader(fd)
        engine.finish_run()


async def _flow_task(driver: AsyncDriver, run: _AioRun) -> None:
    """A flow's Task: runs its coroutine, records how it ended."""
    CURRENT.set(run)
    try:
        await run.coro
    except asyncio.CancelledError:
        driver.ended(run, None)
        return
    except Exception as exc:  # noqa: BLE001 -- the user's code: the flow failed, the run goes on
        driver._failed(run.flow, exc)
        driver.ended(run, O_PROTOCOL)
        return
    driver.ended(run, O_2XX)


# -- httpx ------------------------------------------------------------------------------------

def _error_outcome(exc: BaseException) -> int | None:
    """The engine's outcome of an httpx exception; None when nothing was sent (a bad URL)."""
    import httpx

    if isinstance(exc, asyncio.CancelledError):
        return O_TIMEOUT
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return O_CONNECT
    if isinstance(exc, httpx.TimeoutException):
        return O_TIMEOUT
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc):
        return O_RESET       # closed before a byte of the response, as the engine counts it
    if isinstance(exc, httpx.NetworkError):
        return O_RESET
    if isinstance(exc, (httpx.ProtocolError, httpx.ProxyError)):
        return O_PROTOCOL
    return None


def install_httpx(driver: AsyncDriver) -> Callable[[], None]:
    """Wrap httpx.AsyncClient.send so that requests from flows are recorded; returns the undo.
    No httpx installed: nothing to wrap."""
    try:
        import httpx
    except ImportError:
        return lambda: None

    original = httpx.AsyncClient.send

    class TimedStream(httpx.AsyncByteStream):
        """A streamed response's body: recorded when it is closed."""

        def __init__(self, inner: Any, run: _AioRun, response: Any, start: int) -> None:
            self.inner = inner
            self.run = run
            self.response = response
            self.start = start
            self.recorded = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                yield chunk

        async def aclose(self) -> None:
            try:
                await self.inner.aclose()
            finally:
                if not self.recorded:
                    self.recorded = True
                    driver.record_response(self.run, self.response, self.start,
                                           time.monotonic_ns())

    async def send(self: Any, request: Any, *args: Any, **kw: Any) -> Any:
        run = CURRENT.get()
        if run is None:
            return await original(self, request, *args, **kw)
        start = time.monotonic_ns()
        try:
            response = await original(self, request, *args, **kw)
        except BaseException as exc:
            outcome = _error_outcome(exc)
            if outcome is not None:
                driver.engine.record_step(driver.request_index(request), run.stage, outcome,
                                          start, time.monotonic_ns())
            raise
        if kw.get("stream"):
            response.stream = TimedStream(response.stream, run, response, start)
        else:
            driver.record_response(run, response, start, time.monotonic_ns())
        return response

    httpx.AsyncClient.send = send  # type: ignore[method-assign]

    def undo() -> None:
        httpx.AsyncClient.send = original  # type: ignore[method-assign]

    return undo
