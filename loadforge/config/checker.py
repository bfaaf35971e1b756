"""The profile's type and range checks: each raises ProfileError naming the file and the
field's path (`profile spike.toml: stages[2].rate must be > 0, got -5`). Shared by the plan
builder (profile.py) and the [slo] reader (objectives.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from loadforge import limits
from loadforge.config.redact import redact_url
from loadforge.errors import ProfileError
from loadforge.units import parse_duration, parse_percent, show_value

# Printable ASCII: the engine pre-encodes requests once, and non-ASCII in a request line or
# header would need an encoding choice the profile cannot express.
PRINTABLE = re.compile(r"[\x20-\x7e]*")


def check_target(value: Any, where: str = "--target", *, allow_query: bool = False) -> str:
    """A target URL given on the command line, validated as a profile's `target` is (a run
    from flags loads this module, not the profile's reader).

    `allow_query`: the flags-only run sends its one request to the target's path and query.
    """
    return Checker(where).target(value, "", allow_query=allow_query)


class Checker:
    """Type and range checks that raise ProfileError naming the field."""

    def __init__(self, label: str) -> None:
        self.label = label

    def where(self, path: str) -> str:
        return f"{self.label}: {path}"

    def fail(self, path: str, message: str) -> NoReturn:
        raise ProfileError(f"{self.label}: {path} {message}" if path
                           else f"{self.label}: {message}")

    def table(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path or "the profile", f"must be a table, got {show_value(value)}")
        return value

    def array_of_tables(self, value: Any, path: str, *, nonempty: bool = False,
                        maximum: int | None = None) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            self.fail(path, f"must be an array of tables ([[{path}]]), got {show_value(value)}")
        if nonempty and not value:
            self.fail(path, f"must have at least one [[{path}]] entry, got an empty array")
        if maximum is not None and len(value) > maximum:
            self.fail(path, f"may have at most {maximum:,} [[{path}]] entries, got {len(value):,}")
        for i, item in enumerate(value):
            self.table(item, f"{path}[{i}]")
        return value

    def keys(self, table: dict[str, Any], path: str, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key in allowed:
                continue
            import difflib  # a mistyped key only: not on every run's way

            close = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) else []
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.fail(path, f"has unknown key '{key}'{hint}; allowed: {', '.join(allowed)}"
                      if path else
                      f"unknown top-level key '{key}'{hint}; allowed: {', '.join(allowed)}")

    def require(self, table: dict[str, Any], path: str, key: str, what: str) -> Any:
        if key not in table:
            self.fail(path, f"is missing '{key}' ({what})")
        return table[key]

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {show_value(value)}")
        return value

    def target(self, value: Any, path: str, *, allow_query: bool = False) -> str:
        """A target: "sandbox" or an http(s) URL with a host, without user-info or a
        #fragment, and without a ?query unless `allow_query`."""
        target = self.string(value, path)
        expected = 'must be "sandbox" or an http:// or https:// URL'
        if target == "sandbox":
            return target
        # Messages show the URL without its user-info: they end up in CI logs.
        shown = show_value(redact_url(target))
        if not PRINTABLE.fullmatch(target) or " " in target:
            self.fail(path, f"{expected} (printable ASCII, no spaces), got {shown}")
        try:
            # urlsplit itself refuses an unbalanced "[" (an IPv6 literal); the port it checks
            # only when asked.
            parts = urlsplit(target)
            parts.port  # noqa: B018
        except ValueError:
            self.fail(path, f"{expected} with a valid port, got {shown}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(path, f"{expected} such as \"http://127.0.0.1:8080\", got {shown}")
        if "@" in parts.netloc:
            self.fail(path, f"{expected} without user:password@, got {shown}; send credentials "
                            "in a request's headers (Authorization), which results never "
                            "archive")
        if parts.fragment or "#" in target:
            self.fail(path, f"{expected} without a #fragment (never sent), got {shown}")
        if (parts.query or "?" in target) and not allow_query:
            self.fail(path, f"{expected} without a ?query, got {shown}; its path is a prefix "
                            "of every request's path, a query belongs in requests[].path")
        return target

    def name(self, value: Any, path: str) -> str:
        name = self.string(value, path)
        # "*" marks merged-over rows in the results (DESIGN.md, Parquet results).
        if not name.strip() or name == "*" or not name.isprintable():
            self.fail(path, f"must be a non-empty printable name other than \"*\", "
                            f"got {show_value(value)}")
        return name

    def integer(self, value: Any, path: str, *, minimum: int,
                maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"must be an integer >= {minimum}, got {show_value(value)}")
        if maximum is not None and value > maximum:
            self.fail(path, f"must be at most {maximum:,}, got {show_value(value)}")
        return value

    def number(self, value: Any, path: str, *, minimum: float, inclusive: bool,
               maximum: float | None = None) -> float:
        relation = ">=" if inclusive else ">"
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value)):
            self.fail(path, f"must be a number {relation} {minimum:g}, got {show_value(value)}")
        if value < minimum or (value == minimum and not inclusive):
            self.fail(path, f"must be {relation} {minimum:g}, got {show_value(value)}")
        if maximum is not None and value > maximum:
            self.fail(path, f"must be at most {maximum:,.0f}, got {show_value(value)}")
        return float(value)

    def duration(self, value: Any, path: str, *, allow_zero: bool = False,
                 maximum: float = limits.MAX_DURATION_S) -> float:
        return parse_duration(value, self.where(path), allow_zero=allow_zero, maximum=maximum)

    def percent(self, value: Any, path: str) -> float:
        return parse_percent(value, self.where(path))

    def unique(self, names: list[str], path: str, kind: str) -> None:
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                self.fail(f"{path}[{i}].name", f"{show_value(name)} is already the name of "
                                               f"{path}[{seen[name]}]; {kind} names must be unique")
            seen[name] = i
