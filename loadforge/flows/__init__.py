"""Scripted flows: `async def` functions marked with @flow, run by the engine in step mode.

    from loadforge.flows import flow

    @flow(weight=3)
    async def checkout(user):
        r = await user.post("/login", json={"name": user.row["name"]}, name="login")
        ...

Each arrival of the open-model schedule (or each loop of a closed-model user) runs one flow,
chosen by weight. `user.get/post/put/patch/delete/head/request` send one step through the
engine (loadforge/engine/flows.pxi) and return an httpx-shaped Response; `user.think` waits
without holding the schedule; `user.check` counts a named check. A module that imports httpx,
anyio or asyncio (or marks a flow `@flow(asyncio=True)`) runs its flows as asyncio Tasks, so
they may also send requests with `httpx.AsyncClient`, recorded as steps (flows/aio.py). See
docs/guides/flows.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

FLOW_ATTR = "__loadforge_flow__"


@overload
def flow(fn: F, /) -> F: ...


@overload
def flow(*, weight: int = 1, name: str | None = None,
         asyncio: bool = False) -> Callable[[F], F]: ...


def flow(fn: Any = None, /, *, weight: int = 1, name: str | None = None,
         asyncio: bool = False) -> Any:
    """Mark an `async def f(user)` as a flow; `weight` shares the arrivals between flows.

    asyncio=True runs the module's flows as asyncio Tasks (flows/aio.py), so that they may
    await httpx, anyio or asyncio; a module that imports one of those gets it without asking.
    """
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ValueError(f"@flow weight must be an integer >= 1, got {weight!r}")
    if not isinstance(asyncio, bool):
        raise ValueError(f"@flow asyncio must be True or False, got {asyncio!r}")

    def mark(f: F) -> F:
        setattr(f, FLOW_ATTR, (name or f.__name__, weight, asyncio))
        return f

    if fn is not None:
        return mark(fn)
    return mark


__all__ = ["flow"]
