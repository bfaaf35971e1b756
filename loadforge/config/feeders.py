"""Data feeders and request templates as the profile gives them.

A profile's `[[feeders]]` name files of rows (CSV with a header row, JSON Lines, or a JSON
array of objects); a request's path, header values and body (`body` or `body_file`) may hold
`{feeder.column}` slots, and `${VAR}` references to the environment, resolved once at start.

This module is the config and loading half: the `[[feeders]]` entries, slots and `${VAR}`,
which encoding each slot takes (`body_encodings`), and the rows of a file (`load_rows`). The
engine's binary tables and template segments are compiled from them by `engine/tables.py`."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from loadforge.config.files import RELATIVE_HINT, read_regular
from loadforge.errors import ProfileError

FEEDER_KEYS = ("name", "file", "order", "seed")
ORDERS = ("sequential", "random", "unique")
ORDER_CODE = {name: i for i, name in enumerate(ORDERS)}
# {feeder.column}: a feeder name and a column name (letters, digits, _ and -). Anything else
# in braces (JSON's {"a": 1}) is literal text.
SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\.([A-Za-z_][A-Za-z0-9_\-]*)\}")
ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Encodings of a view (a column as a slot in one place of the request).
RAW, PATH, HEADER, JSON = "raw", "path", "header", "json"


@dataclass(frozen=True)
class Feeder:
    """A [[feeder]]: the file whose rows fill the templates' slots, and how they are taken."""

    name: str
    file: str                  # as the profile gave it
    path: str                  # resolved against the profile's folder
    order: str = "sequential"
    seed: int = 0


@dataclass(frozen=True)
class Slot:
    """`${feeder.column}` in a template: the value of that column in the arrival's row."""

    feeder: str
    column: str


# A template: literal text and slots, in order.
Parts = tuple[str | bytes | Slot, ...]


@dataclass(frozen=True)
class Template:
    """A request whose path, headers or body hold slots (resolved `${VAR}` are literal)."""

    path: Parts
    headers: tuple[tuple[str, Parts], ...]
    body: Parts
    json_body: bool = False    # the body is JSON (is_json_body): slots in its strings escaped
    # A body whose one slot is encoded by this callable (value -> bytes) instead, as a view
    # of its own: a gRPC call's whole message per row (config/grpc.py MessageEncoding).
    body_encoder: Callable[[str], bytes] | None = None


def parse_feeders(check: Any, value: Any, profile_path: str) -> tuple[Feeder, ...]:
    """The [[feeders]] array, checked (the files are read later, by `load_rows`)."""
    feeders = []
    base = os.path.dirname(os.path.abspath(profile_path)) if profile_path != "<profile>" \
        else os.getcwd()
    for i, raw in enumerate(check.array_of_tables(value, "feeders")):
        where = f"feeders[{i}]"
        check.keys(raw, where, FEEDER_KEYS)
        name = check.string(check.require(raw, where, "name", "the name slots use"),
                            f"{where}.name")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name):
            check.fail(f"{where}.name", "must be letters, digits, _ or - (starting with a "
                                        f"letter or _), got {name!r}")
        file = check.string(check.require(raw, where, "file", "a CSV or JSONL file"),
                            f"{where}.file")
        order = check.string(raw.get("order", "sequential"), f"{where}.order")
        if order not in ORDERS:
            check.fail(f"{where}.order", f"must be one of {', '.join(ORDERS)}, got {order!r}")
        seed = check.integer(raw.get("seed", 0), f"{where}.seed", minimum=0,
                             maximum=(1 << 63) - 1)
        feeders.append(Feeder(name, file, os.path.join(base, file), order, seed))
    check.unique([f.name for f in feeders], "feeders", "feeder")
    return tuple(feeders)


class JsonText:
    """Where a walk over a JSON text is: inside a string or not. ${VAR} values are put in as
    the walk goes (environment), so a value inside a string is escaped as one."""

    __slots__ = ("in_string", "skip")

    def __init__(self) -> None:
        self.in_string = False
        self.skip = 0             # characters of the next text a backslash escapes

    def walk(self, text: str) -> None:
        for m in _JSON_QUOTE_TEXT.finditer(text, self.skip):
            if m.start() < self.skip:
                continue
            if not self.in_string:
                self.in_string = m.group() == '"'
            elif m.group() == "\\":
                self.skip = m.start() + 2
            else:
                self.in_string = False
        self.skip = max(0, self.skip - len(text))


_JSON_QUOTE_TEXT = re.compile(r'["\\]')


def environment(text: str, where: str, secrets: list[str], json: JsonText | None = None) -> str:
    """`text` with each ${VAR} replaced by the environment's value (noted in `secrets`). In a
    JSON body (`json`: the walk so far), a value inside a JSON string goes in JSON-escaped."""
    out: list[str] = []
    pos = 0
    for m in ENV.finditer(text):
        name = m.group(1)
        if name not in os.environ:
            raise ProfileError(f"{where}: environment variable {name} is not set")
        value = os.environ[name]
        secrets.append(value)
        if json is not None:
            json.walk(text[pos:m.start()])
            if json.in_string:
                value = json_string(value).decode("utf-8", "surrogateescape")
                secrets.append(value)
        out += (text[pos:m.start()], value)
        pos = m.end()
    if json is not None:
        json.walk(text[pos:])
    out.append(text[pos:])
    return "".join(out)


def parts_of(text: str, where: str, feeders: dict[str, Feeder], secrets: list[str],
             json_body: bool = False) -> Parts:
    """`text` split into literal text and slots, its ${VAR} resolved (inside a JSON body's
    strings, JSON-escaped)."""
    out: list[str | bytes | Slot] = []
    pos = 0
    json = JsonText() if json_body else None
    for m in SLOT.finditer(text):
        if m.group(1) not in feeders:
            raise ProfileError(f"{where}: {{{m.group(1)}.{m.group(2)}}} names no feeder "
                               f"{m.group(1)!r}" + (f"; the feeders are {', '.join(feeders)}"
                                                    if feeders else "; there are no [[feeders]]"))
        if m.start() > pos:
            out.append(environment(text[pos:m.start()], where, secrets, json))
        out.append(Slot(m.group(1), m.group(2)))
        pos = m.end()
    if pos < len(text):
        out.append(environment(text[pos:], where, secrets, json))
    return tuple(out)


def is_json_body(content_type: str | None, body_file: str | None) -> bool:
    """Whether a request's body is JSON, so that slots inside its strings are JSON-escaped:
    its Content-Type header names a JSON media type (application/json, or any type ending in
    +json, such as application/merge-patch+json); without a Content-Type header, a body_file
    whose name ends in .json."""
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        return media == "application/json" or media.endswith("+json")
    return body_file is not None and body_file.lower().endswith(".json")


_JSON_QUOTE = re.compile(rb'["\\]')


def template_body_encodings(tpl: Template) -> list[Any]:
    """body_encodings of a template's body; with a body_encoder, that for every part."""
    if tpl.body_encoder is not None:
        return [tpl.body_encoder] * len(tpl.body)
    return body_encodings(tpl.body, tpl.json_body)


def body_encodings(body: Parts, json_body: bool) -> list[str]:
    """Per part of a body, its encoding: in a JSON body, a slot inside a JSON string ("...")
    takes the value JSON-string-escaped; every other slot (a bare number, or a whole JSON
    value from a JSON Lines feeder) and any body that is not JSON takes it as it is."""
    if not json_body:
        return [RAW] * len(body)
    encodings = []
    in_string = False
    skip = 0                   # bytes of the next literal a backslash escapes
    for p in body:
        if isinstance(p, Slot):
            encodings.append(JSON if in_string else RAW)
            skip = 0
            continue
        encodings.append(RAW)
        text = p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape")
        for m in _JSON_QUOTE.finditer(text, skip):
            if m.start() < skip:
                continue
            if not in_string:
                in_string = m.group() == b'"'
            elif m.group() == b"\\":
                skip = m.start() + 2
            else:
                in_string = False
        skip = max(0, skip - len(text))
    return encodings


def read_body_file(path: str, where: str) -> bytes:
    return read_regular(path, where, RELATIVE_HINT)


def json_string(value: str) -> bytes:
    """`value` as the inside of a JSON string, UTF-8: quotes, backslashes and control
    characters escaped, the rest as it is (a lone surrogate as its \\u escape)."""
    text = json.dumps(value, ensure_ascii=False)[1:-1]
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)[1:-1].encode()


# -- rows -------------------------------------------------------------------------------------

CHUNK_ROWS = 65536
Chunks = Iterator[list[list[str]]]


def load_rows(feeder: Feeder, where: str) -> tuple[list[str], Chunks]:
    """The feeder file's columns, and its rows in chunks of up to CHUNK_ROWS, read as they
    are consumed (a million-row file is never held as Python objects all at once)."""
    raw = read_regular(feeder.path, where, RELATIVE_HINT)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProfileError(f"{where}: {feeder.file} is not UTF-8 (byte {e.start})") from None
    del raw
    if feeder.path.endswith((".jsonl", ".ndjson", ".json")):
        return _jsonl(text, feeder, where)
    return _csv(text, feeder, where)


def _csv(text: str, feeder: Feeder, where: str) -> tuple[list[str], Chunks]:
    # (every run parses its profile; few read a CSV file)
    import csv

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise ProfileError(f"{where}: {feeder.file} is not valid CSV: {e}") from None
    if not header or not any(header):
        raise ProfileError(f"{where}: {feeder.file} has no header row (CSV needs one)")
    columns = [h.strip() for h in header]
    width = len(columns)

    def chunks() -> Chunks:
        done = 0
        while True:
            try:
                chunk = list(islice(reader, CHUNK_ROWS))
            except csv.Error as e:
                raise ProfileError(f"{where}: {feeder.file} is not valid CSV (line "
                                   f"{reader.line_num}): {e}") from None
            if not chunk:
                return
            if [] in chunk:                       # blank lines
                chunk = [row for row in chunk if row]
            if set(map(len, chunk)) != {width}:
                i = next(i for i, row in enumerate(chunk) if len(row) != width)
                raise ProfileError(f"{where}: {feeder.file} row {done + i + 1} has "
                                   f"{len(chunk[i])} fields, the header has {width}")
            done += len(chunk)
            yield chunk
    return columns, chunks()


def _jsonl(text: str, feeder: Feeder, where: str) -> tuple[list[str], Chunks]:
    array = None
    if text.lstrip().startswith("["):      # a .json file holding one array of objects
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"{where}: {feeder.file} line {e.lineno} is not JSON: "
                               f"{e.msg}") from None
        except RecursionError:
            raise ProfileError(f"{where}: {feeder.file} is nested too deeply (a row is one "
                               "flat JSON object)") from None
        if not isinstance(array, list):
            raise ProfileError(f"{where}: {feeder.file} is not an array of JSON objects")

    def objects() -> Iterator[tuple[int, dict[str, Any]]]:
        if array is not None:
            for i, obj in enumerate(array, start=1):
                if not isinstance(obj, dict):
                    raise ProfileError(f"{where}: {feeder.file} item {i} is not a JSON object")
                yield i, obj
            return
        for line, item in enumerate(text.splitlines(), start=1):
            if not item.strip():
                continue
            try:
                obj = json.loads(item)
            except json.JSONDecodeError as e:
                raise ProfileError(f"{where}: {feeder.file} line {line} is not JSON: "
                                   f"{e.msg}") from None
            except RecursionError:
                raise ProfileError(f"{where}: {feeder.file} line {line} is nested too deeply "
                                   "(a row is one flat JSON object)") from None
            if not isinstance(obj, dict):
                raise ProfileError(f"{where}: {feeder.file} line {line} is not a JSON object")
            yield line, obj

    columns: list[str] = []
    for _, obj in objects():           # the columns: every key of every line, in order
        columns.extend(k for k in obj if k not in columns)

    def rows() -> Iterator[list[str]]:
        for line, obj in objects():
            row = []
            for key in columns:
                if key not in obj:
                    raise ProfileError(f"{where}: {feeder.file} line {line} has no {key!r}")
                v = obj[key]
                row.append(v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
            yield row

    def chunks() -> Chunks:
        it = rows()
        while chunk := list(islice(it, CHUNK_ROWS)):
            yield chunk
    return columns, chunks()
