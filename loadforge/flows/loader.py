"""Load and check a flow module, once in the coordinator (exit 2 with one line when it is
bad) and again in each worker (where it is known good).

The step names are found before the run by reading the module's source: every literal
`name="..."` of a `user.get/post/put/patch/delete/head/request` call, else "METHOD /path" for
a literal path, so every step has its request index (its cells and Parquet rows) before the
first arrival. A step whose name is only known at run time is recorded as OTHER_STEP. The
same holds for httpx calls in a flow (`client.get("/cart")`, or a literal
`extensions={"name": "cart"}`): their names are found the same way.

A module that imports httpx, anyio or asyncio, or has a flow marked `@flow(asyncio=True)`, runs
in asyncio mode (flows/aio.py); any other runs on the plain driver, which imports no asyncio.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from loadforge.config.files import check_regular, read_regular
from loadforge.config.plan import FLOW_PREFIX
from loadforge.errors import InputError
from loadforge.flows import FLOW_ATTR

METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
OTHER_STEP = "step:other"
# Importing one of these switches a module to asyncio mode (flows/aio.py).
ASYNCIO_PACKAGES = ("httpx", "anyio", "asyncio")


@dataclass(frozen=True)
class FlowDef:
    name: str
    weight: int
    fn: Any


@dataclass(frozen=True)
class FlowModule:
    path: str
    flows: tuple[FlowDef, ...]
    steps: tuple[str, ...]        # step names, in order of first appearance; OTHER_STEP last
    asyncio: bool = False         # flows run as asyncio Tasks (flows/aio.py)

    @property
    def names(self) -> list[str]:
        """Request names, by request index: the steps, then one row per flow."""
        return list(self.steps) + [FLOW_PREFIX + f.name for f in self.flows]


def _label(path: str) -> str:
    return f"flows module {os.path.basename(path)}"


def import_module(path: str) -> ModuleType:
    label = _label(path)
    source = read_regular(path, label)
    try:
        compile(source, path, "exec")
    except SyntaxError as exc:
        raise InputError(f"{label}: syntax error at line {exc.lineno}: {exc.msg}") from None
    name = "loadforge_flows_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{label}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)    # helpers next to the module import as they would by hand
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 -- any failure of the user's module is bad input
        raise InputError(f"{label}: importing it raised {type(exc).__name__}: {exc}") from None
    finally:
        if sys.path and sys.path[0] == directory:
            sys.path.pop(0)
    return module


def _step_name(call: ast.Call) -> str | None:
    """The literal step name of a user.<method>(...) call, or None when not literal."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    method = func.attr
    if method == "stream":          # httpx's client.stream(method, url, ...)
        method = "request"
    if method not in METHODS and method != "request":
        return None
    for kw in call.keywords:
        if kw.arg == "name":
            if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                return kw.value.value
            return None
        if kw.arg == "extensions" and isinstance(kw.value, ast.Dict):   # httpx's
            for key, value in zip(kw.value.keys, kw.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "name":
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        return value.value
                    return None
    args = call.args
    if method == "request":
        if len(args) >= 2 and all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                  for a in args[:2]):
            return f"{str(args[0].value).upper()} {_path(args[1].value)}"  # type: ignore[attr-defined]
        return None
    if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
        return f"{method.upper()} {_path(args[0].value)}"
    return None


def _path(url: str) -> str:
    """A literal URL's path, as a step's default name has it (user.request, flows/aio.py)."""
    if "://" in url:
        url = urlsplit(url).path or "/"
    url = url.split("?", 1)[0]
    return url if url.startswith("/") else "/" + url


def _uses_asyncio(tree: ast.AST) -> bool:
    """Whether the module imports httpx, anyio or asyncio (or a part of one)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name.split(".")[0] in ASYNCIO_PACKAGES for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in ASYNCIO_PACKAGES:
            return True
    return False


def _awaits(fn: Any) -> bool:
    """Whether the function's own body (not a nested function's) holds an await."""
    try:
        tree = ast.parse(_dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return True      # no source to read: let it run
    top = tree.body[0] if tree.body else None
    if not isinstance(top, ast.AsyncFunctionDef):
        return True

    def visit(node: ast.AST) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                  ast.ClassDef)):
                continue
            if isinstance(child, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
                return True
            if visit(child):
                return True
        return False

    return visit(top)


def _dedent(source: str) -> str:
    lines = source.splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines)


# How long the coordinator's check of a module may take to import it: a module that loops or
# blocks at import time is bad input, said in one line, not a run that never starts.
IMPORT_TIMEOUT_S = 15.0

_CHECK_CODE = """
import sys
from loadforge.errors import InputError
from loadforge.flows import loader
try:
    loader.load(sys.argv[1])
except InputError as exc:
    sys.stdout.write(str(exc))
    sys.exit(2)
"""


def load_checked(path: str, timeout_s: float | None = None) -> FlowModule:
    """load(), after importing the module once in a child process with a deadline: a module
    that never finishes importing (`while True: pass`), blocks on input or ends the process
    (`os._exit`) is exit 2 naming the file, and the coordinator is never stuck in it."""
    import subprocess

    label = _label(path)
    check_regular(path, label)
    timeout_s = IMPORT_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK_CODE, path],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
                              cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        raise InputError(f"{label}: importing {path} did not finish within {timeout_s:g} s (a "
                         "loop or a blocking call at import time?)") from None
    if done.returncode == 2 and done.stdout:
        raise InputError(done.stdout.decode(errors="replace").strip())
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise InputError(f"{label}: importing {path} ended the process (exit code "
                         f"{done.returncode}){f': {last}' if last else ''}")
    return load(path)


def load(path: str) -> FlowModule:
    """The module's flows and step names; InputError (one line) when it is not usable."""
    label = _label(path)
    module = import_module(path)
    flows: list[FlowDef] = []
    seen: set[int] = set()
    asyncio = False
    for value in vars(module).values():
        mark = getattr(value, FLOW_ATTR, None)
        if mark is None or id(value) in seen or not callable(value):
            continue
        seen.add(id(value))
        name, weight, wants_asyncio = mark
        asyncio = asyncio or wants_asyncio
        if not inspect.iscoroutinefunction(value):
            raise InputError(f"{label}: flow {name} is not an async function "
                             "(write `async def`)")
        if not _awaits(value):
            raise InputError(f"{label}: flow {name} never awaits: a flow sends its requests "
                             "with `await user.get(...)` (or another user.* call)")
        flows.append(FlowDef(name, weight, value))
    if not flows:
        raise InputError(f"{label}: no @flow function (mark one with "
                         "`from loadforge.flows import flow` and `@flow`)")
    names = [f.name for f in flows]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(f"{label}: two flows are named {dup}")
    with open(path, encoding="utf-8", errors="replace") as f:
        tree = ast.parse(f.read(), path)
    steps: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            step = _step_name(node)
            if step is not None and step not in steps:
                steps.append(step)
    steps.sort(key=lambda s: s)   # stable order whatever the walk's
    steps.append(OTHER_STEP)
    return FlowModule(os.path.abspath(path), tuple(flows), tuple(steps),
                      asyncio or _uses_asyncio(tree))
