"""The worker side of scripted flows: runs the flows' coroutines over a FlowEngine.

No asyncio: a flow is a coroutine that yields its steps (user.get/post/...) and think times;
the driver hands each step to the engine (FlowEngine.submit), waits in FlowEngine.poll (epoll,
sends, reads, parses and times in C) and resumes every flow whose step completed in that
batch with its Response. Python runs once per step.

Recording: each step in the cell of its name (request index); each flow, when it ends, under
"flow:<name>" with its latency from its intended arrival time (open model; a closed-model
user's flow from when it started) and an outcome of 2xx when it returned, `protocol` when it
raised. Checks and flow failures (by exception type) go with each interval's payload as its
FLOWS section (loadforge/run/wire.py).
"""

from __future__ import annotations

import heapq
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loadforge.engine.tables import RowReader, row_for
from loadforge.flows.loader import OTHER_STEP, FlowModule
from loadforge.flows.user import ERRORS, FlowUsageError, Response, Step, Think, User

O_2XX = 1
O_PROTOCOL = 8


class FlowRun:
    """One flow under way."""

    __slots__ = ("coro", "flow", "stage", "intended", "start", "user", "step", "step_at",
                 "closed")

    def __init__(self, coro: Any, flow: int, stage: int, intended: int, start: int,
                 user: User, closed: bool) -> None:
        self.coro = coro
        self.flow = flow
        self.stage = stage
        self.intended = intended
        self.start = start
        self.user = user
        self.step: Any = None          # the Step under way
        self.step_at = 0
        self.closed = closed


def flow_mix(weights: list[int]) -> list[int]:
    """Smooth weighted round robin over the flows (as schedule.request_mix)."""
    current = [0] * len(weights)
    total = sum(weights)
    cycle = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        cycle.append(best)
    return cycle


class Feeds:
    """The feeder rows flows see as user.row / user.rows, chosen by arrival index as the
    engine chooses them for templates (engine/tables.row_for), read from the compiled
    tables one row at a time (engine/tables.RowReader)."""

    def __init__(self, feeders: list[tuple[str, RowReader]], open_rows: int, worker: int,
                 workers: int) -> None:
        self.feeders = feeders          # (name, reader) per table, in table order
        self.open_rows = open_rows
        # (table index, when in CLOCK_MONOTONIC ns) once a `unique` feeder ran out
        self.exhausted: tuple[int, int] | None = None
        self.worker = worker
        self.workers = workers

    def rows(self, index: int, closed: bool) -> dict[str, dict[str, str]] | None:
        """Every feeder's row for the arrival; None when a `unique` feeder has none left."""
        if closed:
            index = self.open_rows + index * self.workers + self.worker
        out = {}
        for i, (name, reader) in enumerate(self.feeders):
            r = row_for(index, reader.order, reader.seed, reader.rows)
            if r is None:
                if self.exhausted is None:
                    self.exhausted = (i, time.monotonic_ns())
                return None
            out[name] = reader.row(r)
        return out


class Driver:
    def __init__(self, engine: Any, module: FlowModule, base: tuple[str, str, str],
                 feeds: Feeds | None = None, gap_s: float = 0.0, grace_s: float = 5.0,
                 base_url: str = "") -> None:
        self.engine = engine
        self.base_url = base_url
        self.grace_ns = int(grace_s * 1e9)  # flows under way run on this long after the end
        self.gap_ns = int(gap_s * 1e9)     # wake-ups at most this often (timer resolution)
        self.module = module
        self.base = base
        self.feeds = feeds
        self.step_index = {name: i for i, name in enumerate(module.steps)}
        self.other = self.step_index[OTHER_STEP]
        self.flow_base = len(module.steps)
        self.mix = flow_mix([f.weight for f in module.flows])
        self.checks: dict[str, list[int]] = {}
        self.errors: dict[str, int] = {}
        self.samples: dict[str, str] = {}         # one message per flow|ExceptionType
        self.by_token: dict[int, FlowRun] = {}       # steps under way, by submit token
        self.token = 0
        self.waiting: deque[FlowRun] = deque()       # steps for which no connection was free
        self.timers: list[tuple[int, int, Any]] = []   # (when, seq, run or closed user)
        self.seq = 0
        self.active = 0                              # flows under way
        self.closed_users = 0                        # closed-model users of the current stage
        self.closed_stage = -1
        self.closed_seq = 0
        self.exhausted = False

    # -- intervals ----------------------------------------------------------------------------

    def flows_section(self) -> bytes:
        """The interval's checks and flow failures (deltas), as the FLOWS section."""
        if not self.checks and not self.errors:
            return b""
        section: dict[str, Any] = {"checks": self.checks, "errors": self.errors}
        if self.samples:
            section["samples"] = self.samples
        body = json.dumps(section, separators=(",", ":")).encode()
        self.checks.clear()
        self.errors.clear()
        self.samples.clear()
        return body

    # -- flows --------------------------------------------------------------------------------

    def _user(self, index: int, closed: bool) -> User | None:
        user = User(self.base, self.checks, index, self.base_url)
        if self.feeds is not None and self.feeds.feeders:
            rows = self.feeds.rows(index, closed)
            if rows is None:
                self.exhausted = True
                self.engine.stop()
                return None
            user.rows = rows
            user.row = next(iter(rows.values()))
        return user

    def start_flow(self, index: int, intended: int, stage: int, now: int,
                   user: User | None = None, closed: bool = False) -> None:
        flow = self.mix[index % len(self.mix)]
        if user is None:
            user = self._user(index, closed)
            if user is None:
                return
        else:
            user._checks = self.checks
        try:
            coro = self.module.flows[flow].fn(user)
        except Exception as exc:  # noqa: BLE001 -- the user's code
            self._failed(flow, exc)
            self.engine.record_flow(self.flow_base + flow, stage, O_PROTOCOL, intended, now, now)
            return
        self.active += 1
        self.begin(coro, flow, stage, intended, now, user, closed)

    def begin(self, coro: Any, flow: int, stage: int, intended: int, now: int, user: User,
              closed: bool) -> None:
        """Run a flow just started to its first step."""
        self.resume(FlowRun(coro, flow, stage, intended, now, user, closed), None, None, now)

    def _failed(self, flow: int, exc: BaseException) -> None:
        key = f"{self.module.flows[flow].name}|{type(exc).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1
        if key not in self.samples:
            # One line, bounded: a sample to recognise the failure by, not a log.
            message = " ".join(str(exc).split())
            self.samples[key] = message[:200] + ("…" if len(message) > 200 else "")

    def resume(self, run: FlowRun, value: Any, error: BaseException | None, now: int) -> None:
        try:
            if error is not None:
                item = run.coro.throw(error)
            else:
                item = run.coro.send(value)
        except StopIteration:
            self.end(run, O_2XX, time.monotonic_ns())
            return
        except Exception as exc:  # noqa: BLE001 -- the user's code: the flow failed, the run goes on
            self._failed(run.flow, exc)
            self.end(run, O_PROTOCOL, time.monotonic_ns())
            return
        cls = type(item)
        if cls is Step:
            run.step = item
            run.step_at = now
            if not self.submit(run, now):
                self.waiting.append(run)
        elif cls is Think:
            self.seq += 1
            heapq.heappush(self.timers, (now + item.ns, self.seq, run))
        else:
            self.resume(run, None, FlowUsageError(
                f"a flow awaited {cls.__name__}; flows await only user.* calls "
                "(user.get/post/..., user.think) unless their module imports httpx, anyio or "
                "asyncio or marks a flow @flow(asyncio=True)"), now)

    def submit(self, run: FlowRun, now: int) -> bool:
        """Hand the run's step to the engine; False (queued) when no connection is free."""
        step = run.step
        self.token += 1
        token = self.token
        self.by_token[token] = run      # before: the engine may complete it at once
        if self.engine.submit(step.data, step.head, self.step_index.get(step.name, self.other),
                              run.stage, run.step_at, now, token) < 0:
            del self.by_token[token]
            return False
        return True

    def end(self, run: FlowRun, outcome: int, now: int) -> None:
        self.active -= 1
        self.engine.record_flow(self.flow_base + run.flow, run.stage, outcome, run.intended,
                                run.start, now)
        if run.closed:
            self.next_closed(run.user, run.stage, now)

    # -- the closed model ---------------------------------------------------------------------

    def next_closed(self, user: User | None, stage: int, now: int) -> None:
        st = self.engine.stage()
        if st is None or st[0] != stage or st[1] or now >= st[5] or self.exhausted:
            self.closed_users -= 1 if st is not None and st[0] == stage else 0
            return
        think = st[3]
        if think > 0 and user is not None:
            self.seq += 1
            heapq.heappush(self.timers, (now + think, self.seq, (user, stage)))
        else:
            self.start_closed(user, stage, now)

    def start_closed(self, user: User | None, stage: int, now: int) -> None:
        index = self.closed_seq
        self.closed_seq += 1
        if user is None:
            user = self._user(index, True)
            if user is None:
                self.closed_users -= 1
                return
        elif self.feeds is not None and self.feeds.feeders:
            rows = self.feeds.rows(index, True)
            if rows is None:
                self.exhausted = True
                self.engine.stop()
                return
            user.rows = rows
            user.row = next(iter(rows.values()))
        self.engine.count_closed(stage)
        self.start_flow(index, now, stage, now, user, closed=True)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, t0: int, on_interval: Callable[[bytes, int, int], None],
            preconnect: int = 0) -> None:
        engine = self.engine
        section = self.flows_section

        def interval(payload: bytes, open_conns: int, in_flight: int) -> None:
            on_interval(payload + flows_trailer(section()), open_conns, in_flight)

        engine.start(t0, interval, preconnect)
        gap = self.gap_ns
        grace_end = -1
        now = time.monotonic_ns()
        while True:
            st = self.admit(now)
            timers = self.timers
            while timers and timers[0][0] <= now:
                _, _, what = heapq.heappop(timers)
                if type(what) is FlowRun:
                    self.resume(what, None, None, now)
                else:
                    self.start_closed(what[0], what[1], now)
            waiting = self.waiting
            while waiting:
                if not self.submit(waiting[0], now):
                    break
                waiting.popleft()
            if st is None and grace_end < 0:
                grace_end = now + self.grace_ns
            if st is None and timers and (now >= grace_end or timers[0][0] > grace_end):
                # The stages are over (or the run was stopped) and the flows under way had
                # their grace (load.timeout): one still thinking is ended, unrecorded; steps
                # already sent are still awaited.
                for _, _, what in timers:
                    if type(what) is FlowRun:
                        what.coro.close()
                        self.active -= 1
                timers.clear()
            if st is None and self.active == 0:
                break
            wake = engine.wake_at(now)
            if timers and timers[0][0] < wake:
                wake = timers[0][0]
            if st is None and timers and grace_end < wake:
                wake = grace_end
            done, now = engine.poll(wake - now, gap)
            by_token = self.by_token
            for token, outcome, status, raw, end in done:
                run = by_token.pop(token)
                step = run.step
                if outcome >= 5:
                    self.resume(run, None, ERRORS[outcome](
                        f"step {step.name}: {ERRORS[outcome].__name__}"), now)
                    continue
                self.resume(run, response_of(run, status, raw, end), None, now)
        engine.finish_run()

    def admit(self, now: int) -> tuple[Any, ...] | None:
        """Start the flows the schedule has due and the closed-model users the current stage
        still lacks; returns the engine's stage (None once the stages are over)."""
        for index, intended, stage in self.engine.due(now):
            self.start_flow(index, intended, stage, now)
        st = self.engine.stage()
        if st is not None and not st[1] and now >= st[4]:
            if st[0] != self.closed_stage:
                self.closed_stage = st[0]
                self.closed_users = 0
            while self.closed_users < st[2] and not self.exhausted:
                self.closed_users += 1
                self.start_closed(None, st[0], now)
        return st


def response_of(run: Any, status: int, raw: bytes, end: int) -> Response:
    """The Response of a step the engine completed (`run`: its FlowRun, or anything with its
    step, when it was submitted and its user); the cookies it sets go to the user."""
    step = run.step
    response = Response(status, raw, step.name, end - run.step_at)
    if b"et-Cookie:" in raw or b"et-cookie:" in raw:
        for value in response.headers.get_list("set-cookie"):
            k, _, v = value.split(";", 1)[0].partition("=")
            run.user.cookies[k.strip()] = v.strip()
    return response


def flows_trailer(section: bytes) -> bytes:
    """The FLOWS section: uint32 length, then that many bytes of JSON (none: length 0)."""
    return len(section).to_bytes(4, "little") + section
