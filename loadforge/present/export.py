"""`loadforge export RUN --hlog PATH`: a run's interval histograms as an HdrHistogram interval
log (the text format of Java's HistogramLogWriter, read by HistogramLogProcessor, HdrHistogram
Go/C/Python log readers and HdrHistogram plotters).

One tag per stage: each line is a stage's merged interval row of successful responses
(stage, "*", "ok": the summary's headline latency; (stage, "*", "*") in files written before
"ok" rows existed), the latency histogram from intended send time, in microseconds, as stored in Parquet (V2 compressed,
base64). Timestamps are seconds relative to the run's start, given as #[StartTime] and
#[BaseTime], so readers can also place intervals on the wall clock.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

from loadforge.engine import histogram
from loadforge.present.outputs import write_output
from loadforge.results.store import OK, Result, read_result

LOG_FORMAT_VERSION = "1.3"
# Java's reader takes the tag up to the first ','; whitespace would break other parsers.
_TAG_UNSAFE = re.compile(r"[,\s]")


def hlog_tag(stage: str) -> str:
    return _TAG_UNSAFE.sub("_", stage)


def _start_epoch_s(result: Result) -> float:
    try:
        moment = datetime.fromisoformat(result.metadata.get("start_time", ""))
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def hlog_text(result: Result) -> str:
    """The interval log of `result`: one line per (interval, stage), in time order."""
    start = _start_epoch_s(result)
    lines = [
        f"#[Histogram log format version {LOG_FORMAT_VERSION}]",
        f"#[loadforge run {result.run_id}: latency of successful responses from intended send "
        "time, microseconds; one tag per stage]",
    ]
    if start:
        stamp = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds")
        lines.append(f"#[StartTime: {start:.3f} (seconds since epoch), {stamp}]")
        lines.append(f"#[BaseTime: {start:.3f} (seconds since epoch)]")
    lines.append('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"')
    rows = result.rows("interval", stage=None, name="*", outcome=OK if result.has_ok_rows else "*")
    rows = [r for r in rows if r["stage"] != "*"]
    rows.sort(key=lambda r: (int(r["start_ms"]), str(r["stage"])))
    for row in rows:
        h = result.histogram(row)
        payload = base64.b64encode(histogram.encode(h)).decode("ascii")
        begin = int(row["start_ms"]) / 1000
        length = (int(row["end_ms"]) - int(row["start_ms"])) / 1000
        # Interval_Max in milliseconds, as Java logs microsecond histograms by convention.
        max_ms = h.get_max_value() / 1000 if h.total_count else 0.0
        lines.append(f"Tag={hlog_tag(str(row['stage']))},{begin:.3f},{length:.3f},"
                     f"{max_ms:.3f},{payload}")
    return "\n".join(lines) + "\n"


def write_hlog(run_path: str, out_path: str) -> int:
    """Export the run at `run_path` to `out_path`; returns the number of interval lines."""
    result = read_result(run_path)
    text = hlog_text(result)
    write_output(out_path, text.encode("ascii"), "--hlog")
    return sum(1 for line in text.splitlines() if line.startswith("Tag="))
