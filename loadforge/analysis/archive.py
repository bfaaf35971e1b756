"""`loadforge ls DIR`: the runs of an archive directory, one line each.

The verdict is recomputed from the file itself: the profile archived in the metadata gives the
objectives, the interval rows give the figures (readback.run_fold, then slo.evaluate and scaling.analyze: the
fold and the verdicts `run` makes of the same rows in memory). So a
result file never needs rewriting after it is closed, and a directory of results carries its
verdicts with it whatever tool copied it around. The price is a full read per file, which `ls`
pays for tens of runs in well under a second each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from loadforge.analysis import scaling, slo
from loadforge.analysis.readback import plan_of_result, run_figures, run_fold, run_title
from loadforge.config.plan import Plan
from loadforge.errors import ResultsError
from loadforge.results.store import Result, check_regular_file, read_result


@dataclass
class RunEntry:
    path: str
    run_id: str
    start_time: str
    profile: str
    labels: dict[str, str]
    target_rps: float | None       # None: every stage closed-model, no target
    achieved_rps: float
    p99_us: float
    error_rate: float
    verdict: str              # "pass", "FAIL n/m", or "-" (no objectives)
    failed: list[str]
    p50_us: float = 0.0            # with p99_us: over the successful responses

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _files(paths: list[str]) -> tuple[list[str], list[str]]:
    files, problems = [], []
    for given in paths:
        if os.path.isdir(given):
            found = sorted(os.path.join(given, e) for e in os.listdir(given)
                           if e.endswith(".parquet") and os.path.isfile(os.path.join(given, e)))
            if not found:
                problems.append(f"results {given}: directory holds no .parquet files")
            files += found
        else:
            try:
                check_regular_file(given)
            except ResultsError as exc:
                problems.append(str(exc))
                continue
            files.append(given)
    return files, problems


def verdicts_of(plan: Plan, result: Result) -> list[dict[str, Any]]:
    """The verdicts of `plan`'s objectives judged again from a result file: its rows folded
    once (readback.run_fold), judged by slo.evaluate and scaling.analyze as `run` judged
    them from memory."""
    fold = run_fold(result, plan.fail_status,
                    latency=slo.needs_latency(plan) or scaling.needs_latency(plan))
    return slo.evaluate(plan, fold) + scaling.analyze(plan, fold)["slo"]


def list_runs(paths: list[str]) -> tuple[list[RunEntry], list[str]]:
    """Entries of the readable runs (oldest first) and a message per unreadable file."""
    files, problems = _files(paths)
    entries = []
    for path in files:
        try:
            result = read_result(path)
            figures = run_figures(result, run_title(result))
            values = figures.run.values()
            plan = plan_of_result(result)
            verdicts = verdicts_of(plan, result) if plan is not None else []
        except ResultsError as exc:
            problems.append(str(exc))
            continue
        failed = [v["name"] for v in verdicts if not v["ok"]]
        verdict = "-" if not verdicts else ("pass" if not failed else
                                            f"FAIL {len(failed)}/{len(verdicts)}")
        entries.append(RunEntry(
            path=path, run_id=result.run_id,
            start_time=result.metadata.get("start_time", ""),
            profile=result.metadata.get("profile_name", ""), labels=result.labels,
            target_rps=values["target_rps"], achieved_rps=float(values["achieved_rps"] or 0),
            p99_us=float(values["p99"] or 0), error_rate=float(values["error_rate"] or 0),
            verdict=verdict,
            failed=failed, p50_us=float(values["p50"] or 0)))
    entries.sort(key=lambda e: (e.start_time, e.path))
    return entries, problems
