"""Durations and percentages as users write them in profiles and flags.

`where` names the input for messages: a profile field ("profile spike.toml: stages[2].duration")
or a flag ("--duration"). Every error is a ProfileError that says what was expected and what
was given.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any

from loadforge.errors import ProfileError
from loadforge.limits import MAX_DURATION_S, show_seconds

# Sub-second units divide rather than multiply so that "250ms" is exactly 250 / 1000.
_UNITS: dict[str, tuple[float, float]] = {
    "us": (1.0, 1e6),
    "\u00b5s": (1.0, 1e6),    # micro sign
    "\u03bcs": (1.0, 1e6),    # Greek small mu, what most keyboards produce
    "ms": (1.0, 1e3),
    "s": (1.0, 1.0),
    "m": (60.0, 1.0),
    "h": (3600.0, 1.0),
}
UNIT_NAMES = "us, ms, s, m, h"

# ASCII digits only: float() would also accept other scripts' digits.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# "ms" before "m" so that "5ms" is milliseconds; "1m30s" is allowed (Go and k6 write it so).
_PART = re.compile(rf"({_NUMBER})\s*(us|\u00b5s|\u03bcs|ms|s|m|h)\s*", re.ASCII)
_DURATION = re.compile(rf"(?:{_PART.pattern})+", re.ASCII)
_PERCENT = re.compile(rf"({_NUMBER})\s*%", re.ASCII)


def show_value(value: Any) -> str:
    """A value as a message shows it: TOML spelling for scalars, a kind for tables and arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '…"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, datetime.date | datetime.time):
        return f"the date/time {value.isoformat()}"
    return f"a {type(value).__name__}"


def parse_duration(value: Any, where: str, *, allow_zero: bool = False,
                   maximum: float = MAX_DURATION_S) -> float:
    """Seconds from a duration string: "100us", "250ms", "1.5s", "2m", "1h", "1m30s".

    Bare numbers are refused: "5" could mean seconds or milliseconds depending on the tool the
    user came from. Negative durations are always refused, zero unless `allow_zero`, and so is
    anything longer than `maximum` (limits.py: what the engine can represent).
    """
    expected = f'a duration with a unit ({UNIT_NAMES}), e.g. "250ms" or "5s"'
    if allow_zero and not isinstance(value, bool) and value in (0, "0"):
        return 0.0     # zero needs no unit
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ProfileError(f'{where} must be {expected}; a bare number has no unit, '
                               f'got {show_value(value)} (write "{value}s" for seconds)')
        raise ProfileError(f"{where} must be {expected}, got {show_value(value)}")
    text = value.strip()
    if text.startswith("-") and _DURATION.fullmatch(text[1:].lstrip()):
        raise ProfileError(f"{where} must not be negative, got {show_value(value)}")
    if not _DURATION.fullmatch(text):
        if re.fullmatch(_NUMBER, text, re.ASCII):
            raise ProfileError(f'{where} must be {expected}; a bare number has no unit, '
                               f'got {show_value(value)}')
        raise ProfileError(f"{where} must be {expected}, got {show_value(value)}")
    seconds = 0.0
    for match in _PART.finditer(text):
        multiplier, divisor = _UNITS[match.group(2)]
        seconds += float(match.group(1)) * multiplier / divisor
    if not math.isfinite(seconds) or seconds > maximum:
        raise ProfileError(f"{where} must be at most {show_seconds(maximum)}, "
                           f"got {show_value(value)}")
    if seconds == 0 and not allow_zero:
        raise ProfileError(f"{where} must be > 0, got {show_value(value)}")
    return seconds


def parse_percent(value: Any, where: str) -> float:
    """A fraction in [0, 1] from "0.1%" (-> 0.001) or from a plain number already in [0, 1]."""
    expected = 'a percentage like "0.1%" or a fraction between 0 and 1'
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value == 1:
            # A bare 1 reads as "1 %" to most people and as 100 % (a limit nothing can
            # breach) to the parser: refused, like a latency without a unit.
            raise ProfileError(f"{where} must not be a bare 1 (100 %? 1 %?): write 1% or "
                               "0.01, or 100% if that is what you mean")
        if not (math.isfinite(value) and 0 <= value <= 1):
            hint = f' (write "{value}%" for a percentage)' if math.isfinite(value) and value > 1 else ""
            raise ProfileError(f"{where} must be {expected}, got {show_value(value)}{hint}")
        return float(value)
    if isinstance(value, str):
        match = _PERCENT.fullmatch(value.strip())
        if match:
            percent = float(match.group(1))
            if percent <= 100:
                return percent / 100
            raise ProfileError(f"{where} must be at most 100%, got {show_value(value)}")
    raise ProfileError(f"{where} must be {expected}, got {show_value(value)}")


# -- shown ------------------------------------------------------------------------------------

def _three_digits(value: float) -> str:
    for decimals, limit in ((2, 9.995), (1, 99.95)):
        if value < limit:
            return f"{value:.{decimals}f}"
    return f"{value:.0f}"


def format_us(us: float) -> str:
    """812µs, 12.3ms, 1.20s: three significant digits past a millisecond."""
    us = float(us)
    if us < 999.5:
        return f"{us:.0f}µs"
    if us < 999_500:
        return _three_digits(us / 1e3) + "ms"
    return _three_digits(us / 1e6) + "s"
