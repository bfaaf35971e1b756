"""The largest numbers a profile or a flag may give, and why each is where it is.

Every cap is what the engine or the coordinator can represent and hold, with room to spare, so
that a number past it is refused up front (exit 2, naming the input) rather than overflowing
later: a 292-year timeout wrapped the engine's int64 nanosecond deadline and timed out every
request; a weight of 2^31 made the request-mix cycle two billion entries long; 100,000 stages
kept two 185 KiB histograms each in the coordinator.
"""

from __future__ import annotations

DAY_S = 86_400.0
# Any duration (a stage, the run, an action's offset): nanoseconds in int64 would reach 292
# years; 30 days is past any soak test and keeps the Parquet file's interval rows bounded.
MAX_DURATION_S = 30 * DAY_S
MAX_RUN_S = MAX_DURATION_S
# Per-request timeout and think time: latency histograms end at 1 h (histogram.HIGHEST_US),
# so a longer wait could not be recorded as what it was.
MAX_TIMEOUT_S = 3600.0
MAX_THINK_S = 3600.0
MAX_LATENCY_OBJECTIVE_S = 3600.0
# Arrivals closer together than this share a wake-up; beyond the 1 s reporting interval it
# would move arrivals into the wrong interval.
MAX_TIMER_RESOLUTION_S = 1.0
# Requests per second of one stage (and of --rate): far beyond one machine's sockets, and
# rate x 30 days stays an exact integer in a double.
MAX_RATE = 10_000_000.0
# One open connection is one file descriptor and one slot of the engine's connection table;
# one source address reaches one target over at most ~64k ephemeral ports anyway.
MAX_CONNECTIONS = 100_000
# HTTP/2 streams per connection: each is a preallocated slot in the engine; servers allow 100
# to 1000 (nginx http2_max_concurrent_streams 128, h2load -m).
MAX_STREAMS = 10_000
# connections x streams: the stream table (about 150 bytes a slot) stays under ~150 MB
MAX_STREAM_SLOTS = 1_000_000
MAX_WORKERS = 256
# The coordinator keeps two latency histograms (185 KiB each) per stage and per stage x
# request x outcome for the whole run; these caps bound that to some hundreds of MiB.
MAX_STAGES = 100
MAX_REQUESTS = 100
MAX_STAGE_REQUESTS = 1_000           # stages x requests
# The request mix is one cycle of smooth weighted round robin, as long as the weights' sum
# (an int32 array in each worker, computed once in Python): 10,000 is a 0.01 % resolution.
MAX_TOTAL_WEIGHT = 10_000


def show_seconds(seconds: float) -> str:
    """A cap as a message shows it: "1h", "30 days", "1s"."""
    if seconds >= DAY_S and seconds % DAY_S == 0:
        return f"{seconds / DAY_S:g} days"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    return f"{seconds:g}s"
