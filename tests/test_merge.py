"""The exact merge (run/merge.py) driven with synthetic worker reports: no process, no
socket. Intervals merge in order once every worker has reported them, the rows' histograms are
those of the union of the workers' samples, errors stay out of the "ok" rows, the stage and
run rows add up; the runner's feed of the merged intervals (runner.IntervalFeed) says when
the run must stop."""

from __future__ import annotations

import array
import sys
from typing import Any

from loadforge.analysis import figures
from loadforge.config.plan import Plan, Request, Stage
from loadforge.engine import histogram
from loadforge.run.merge import Aggregator
from loadforge.run.session import Stop
from loadforge.run.workers import CellDelta, HistSlice, IntervalReport, done_message
from loadforge.runner import IntervalFeed, nothing_to_analyse

PLAN = Plan("p", "http://127.0.0.1:9/", (Stage("warm", 2.0, 10.0, 10.0),
                                         Stage("hot", 2.0, 20.0, 20.0)),
            (Request("home"), Request("search", path="/search")))


class Rows:
    """What the merge hands back (Aggregator.take), kept; as a writer (IntervalFeed's), it
    fails when told to."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.batches = 0
        self.failure: str | None = None

    def write(self, rows: list[dict[str, Any]], last: bool = False) -> bool:
        self.rows += rows
        self.batches += 1
        return self.failure is None

    def take(self, agg: Aggregator) -> None:
        for merged in agg.take():
            self.write(merged.rows)


class Fold:
    def add(self, rows: list[dict[str, Any]]) -> None:
        pass


def hist_slice(values: list[int]) -> HistSlice:
    h = histogram.new_histogram()
    for v in values:
        h.record_value(v)
    nonzero = [i for i in range(h.counts_len) if h.counts[i]]
    counts = array.array("I", [h.counts[i] for i in range(nonzero[0], nonzero[-1] + 1)])
    if sys.byteorder != "little":
        counts.byteswap()
    return HistSlice(nonzero[0], counts.tobytes(), len(values), min(values), max(values))


def report(worker: int, index: int, cells: dict[tuple[int, int, str], list[int]],
           final: bool = False, scheduled: int | None = None, unsent: int = 0
           ) -> IntervalReport:
    """One worker's report of one interval: cells (stage, request, outcome) -> latencies µs."""
    deltas = [CellDelta(stage, request, outcome, "*", len(values), hist_slice(values),
                        hist_slice(values))
              for (stage, request, outcome), values in cells.items()]
    stage = 0 if index < 2 else 1
    n = sum(len(v) for v in cells.values())
    per_stage = [0, 0]
    per_stage[stage] = n
    sched = [0, 0]
    sched[stage] = n + unsent if scheduled is None else scheduled
    unsents = [0, 0]
    unsents[stage] = unsent
    return IntervalReport(worker, index, final, sched, per_stage, unsents, deltas, 1, 0, 1, 0,
                          [0, 0], [0, 0])


def merge(reports: list[IntervalReport]) -> tuple[Aggregator, Rows]:
    sink = Rows()
    agg = Aggregator(PLAN, 2, 1.0)
    for r in reports:
        agg.add(r)
        sink.take(agg)
    return agg, sink


def rows_of(rows: list[dict[str, Any]], scope: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if r["scope"] == scope
            and all(r[k] == v for k, v in match.items())]


def test_an_interval_is_merged_once_every_worker_reported_it_and_in_order():
    reports = [report(0, 0, {(0, 0, "2xx"): [100, 200]}),
               report(0, 1, {(0, 0, "2xx"): [300]}),
               report(1, 1, {(0, 0, "2xx"): [400]})]
    agg, sink = merge(reports)
    assert sink.rows == []                  # interval 0 waits for worker 1
    agg.add(report(1, 0, {(0, 0, "2xx"): [500]}))
    sink.take(agg)
    starts = [r["start_ms"] for r in rows_of(sink.rows, "interval", name="*", outcome="*")]
    assert starts == [0, 1000]
    counts = [r["count"] for r in rows_of(sink.rows, "interval", name="*", outcome="*")]
    assert counts == [3, 2]


def test_a_worker_past_its_final_report_does_not_hold_the_others_back():
    agg, sink = merge([report(0, 0, {(0, 0, "2xx"): [100]}, final=True),
                       report(1, 0, {(0, 0, "2xx"): [200]}),
                       report(1, 1, {(0, 0, "2xx"): [300]}, final=True)])
    assert [r["start_ms"] for r in rows_of(sink.rows, "interval", name="*", outcome="*")] == [
        0, 1000]


def test_merged_latency_is_the_histogram_of_the_union():
    a, b = [120, 130, 5_000, 7], [9_000_000, 44, 44]
    _, sink = merge([report(0, 0, {(0, 1, "2xx"): a}), report(1, 0, {(0, 1, "2xx"): b})])
    union = histogram.new_histogram()
    for v in a + b:
        union.record_value(v)
    (row,) = rows_of(sink.rows, "interval", name="search", outcome="2xx")
    assert row["count"] == len(a + b)
    assert histogram.encode(row["latency"]) == histogram.encode(union)


def test_errors_stay_out_of_the_ok_rows_and_4xx_is_an_error_by_default():
    _, sink = merge([report(0, 0, {(0, 0, "2xx"): [100, 100], (0, 0, "4xx"): [50]}),
                     report(1, 0, {(0, 0, "5xx"): [60], (0, 0, "timeout"): [70]})])
    (ok,) = rows_of(sink.rows, "interval", name="home", outcome="ok")
    assert ok["count"] == 2
    assert histogram.stats(ok["latency"])["max"] < 110
    (all_ok,) = rows_of(sink.rows, "interval", name="*", outcome="ok")
    assert all_ok["count"] == 2
    (total,) = rows_of(sink.rows, "interval", name="*", outcome="*")
    assert total["count"] == 5


def test_finish_adds_stage_and_run_rows_that_add_up():
    reports = [report(w, i, {(0 if i < 2 else 1, w, "2xx"): [100 + i] * (i + 1)},
                      final=i == 3, unsent=w)
               for i in range(4) for w in range(2)]
    agg, sink = merge(reports)
    assert agg.drain() == []
    rows, inputs = agg.finish(4.0)
    stage_totals = rows_of(rows, "stage", name="*", outcome="*")
    assert [r["stage"] for r in stage_totals] == ["warm", "hot"]
    assert [r["count"] for r in stage_totals] == [2 * (1 + 2), 2 * (3 + 4)]
    assert [r["unsent"] for r in stage_totals] == [2, 2]
    (run,) = rows_of(rows, "run", name="*", outcome="*")
    assert run["count"] == 20 and run["scheduled"] == 24 and run["unsent"] == 4
    assert [r["count"] for r in rows_of(rows, "run", outcome="2xx")] == [10, 10]
    assert [(s.name, s.target_rps) for s in inputs.stages] == [("warm", 10.0), ("hot", 20.0)]
    assert inputs.run.target_rps == 15.0
    # The summary folds these rows as `compare` folds them from the file.
    summary = figures.summary_figures(rows, PLAN.fail_status, ["home", "search"], inputs)
    assert summary["requests"] == 20


def test_a_unique_feeder_that_ran_out_is_the_earliest_time_any_worker_said():
    agg, _ = merge([])
    assert agg.note_done(done_message(None)) is None
    assert agg.note_done(done_message((0, 5_000))) == 5_000
    assert agg.note_done(done_message((0, 3_000))) == 3_000
    assert agg.exhausted == (0, 3_000)


def feed(reports: list[IntervalReport], writer: Rows, judge: Any = None
         ) -> tuple[IntervalFeed, Stop]:
    """The merged intervals as the runner takes them: written, folded, judged."""
    agg = Aggregator(PLAN, 2, 1.0)
    fed, stop = IntervalFeed(writer, Fold(), judge), Stop()  # type: ignore[arg-type]
    for r in reports:
        agg.add(r)
        for merged in agg.take():
            fed.interval(merged, stop)
    return fed, stop


def test_a_failed_write_and_an_objective_ask_the_run_to_stop():
    sink = Rows()
    sink.failure = "disk full"
    fed, stop = feed([report(0, 0, {(0, 0, "2xx"): [1]}), report(1, 0, {(0, 0, "2xx"): [1]})],
                     sink)
    assert stop.asked and fed.abort_reason is None
    fed, stop = feed([report(0, 0, {(0, 0, "5xx"): [1]}), report(1, 0, {(0, 0, "5xx"): [1]})],
                     Rows(), judge=lambda index, rows: f"errors in interval {index}")
    assert stop.asked and fed.abort_reason == "errors in interval 0"
    fed, stop = feed([report(0, 0, {(0, 0, "2xx"): [1]}), report(1, 0, {(0, 0, "2xx"): [1]})],
                     Rows(), judge=lambda index, rows: None)
    assert not stop.asked and fed.abort_reason is None


def test_merged_intervals_carry_what_the_progress_line_shows():
    agg = Aggregator(PLAN, 2, 1.0)
    for r in [report(0, 0, {(0, 0, "2xx"): [100, 300], (0, 0, "5xx"): [9]}),
              report(1, 0, {(0, 0, "2xx"): [200]})]:
        agg.add(r)
    (merged,) = agg.take()
    assert agg.take() == []
    assert (merged.index, merged.stage, merged.target_rps) == (0, "warm", 10.0)
    assert (merged.responses, merged.requests, merged.errors) == (4, 4, 1)
    assert merged.achieved_rps == 4.0 and merged.ok_latency.total_count == 3


def test_a_run_with_nothing_to_analyse_has_the_summary_scaling_would_give():
    # No objectives, no backend header, no metrics, no actions: the runner neither imports
    # nor calls analysis/scaling, and fills in what scaling.annotate would have said.
    from loadforge.analysis import scaling

    reports = [report(w, i, {(0 if i < 2 else 1, w, "2xx"): [100 + i] * (i + 1)},
                      final=i == 3) for i in range(4) for w in range(2)]
    agg, sink = merge(reports)
    rows, inputs = agg.finish(4.0)
    fold = figures.RunFold(figures.RowSource.live(PLAN.fail_status), 1000)
    fold.add(sink.rows)
    fold.add(rows)
    analysed = figures.summary_figures(rows, PLAN.fail_status, ["home", "search"], inputs)
    plain = figures.summary_figures(rows, PLAN.fail_status, ["home", "search"], inputs)
    assert scaling.annotate(analysed, PLAN, fold) == []
    nothing_to_analyse(plain)
    assert plain == analysed
    assert list(plain) == list(analysed)
    assert [list(b) for b in plain["stages"]] == [list(b) for b in analysed["stages"]]


def test_an_intervals_rows_keep_their_histograms_when_the_next_merges_in_the_same_call():
    # Worker 1 ended at interval 0: its report completes intervals 0 and 1 at once. The
    # stage's sum of a cell once shared interval 0's histogram and added interval 1 into it,
    # so interval 0's row said 2 responses and held the latencies of 4.
    agg = Aggregator(PLAN, 2, 1.0)
    agg.add(report(0, 0, {(0, 0, "2xx"): [100]}))
    agg.add(report(0, 1, {(0, 0, "2xx"): [300, 300]}, final=True))
    agg.add(report(1, 0, {(0, 0, "2xx"): [200]}, final=True))
    merged = agg.take()
    assert [m.index for m in merged] == [0, 1]
    for m, values in zip(merged, ([100, 200], [300, 300]), strict=True):
        expected = histogram.new_histogram()
        for v in values:
            expected.record_value(v)
        for outcome in ("2xx", "ok"):
            (row,) = [r for r in m.rows if r["name"] == "home" and r["outcome"] == outcome]
            assert row["count"] == 2
            assert histogram.encode(row["latency"]) == histogram.encode(expected)
    rows, _ = agg.finish(2.0)
    (stage_row,) = [r for r in rows if r["scope"] == "stage" and r["name"] == "home"
                    and r["outcome"] == "2xx"]
    assert stage_row["count"] == stage_row["latency"].total_count == 4
