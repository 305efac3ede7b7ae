"""List (with paging and consistent snapshots) and watch (with bookmarks and initial events)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import ApiError
from .http import go_json
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from .store import Event, Obj, Watcher, check_rv_param, obj_key

if TYPE_CHECKING:
    from .server import KubeEmulator

CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)


def _selectors(rt: ResourceType, q: dict[str, str]) -> tuple[LabelSelector, FieldSelector]:
    return parse_label_selector(q.get("labelSelector")), parse_field_selector(
        q.get("fieldSelector"), rt.plural
    )


def _matches(obj: Obj, ns: str | None, ls: LabelSelector, fs: FieldSelector) -> bool:
    md = obj.get("metadata") or {}
    if ns is not None and ns != "" and md.get("namespace") != ns:
        return False
    return ls.matches(md.get("labels")) and fs.matches(obj)


def _encode_continue(rv: int, key: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ns, _, name = raw["start"].rstrip("\x00").partition("/")
        return int(raw["rv"]), (ns, name)
    except Exception:
        raise errors.bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ) from None


def list_objects(
    emu: KubeEmulator, rt: ResourceType, ns: str | None, q: dict[str, str]
) -> tuple[list[Obj], int, tuple[str, int | None] | None]:
    """Return (items, list resourceVersion, (continue token, remainingItemCount) or None)."""
    store = emu.store
    ls, fs = _selectors(rt, q)
    limit = int(q["limit"]) if q.get("limit", "").isdigit() else 0
    rv_param = check_rv_param(q.get("resourceVersion"))
    match = q.get("resourceVersionMatch", "")
    after: tuple[str, str] | None = None
    if q.get("continue"):
        if rv_param is not None:
            raise errors.bad_request("specifying resource version is not allowed when using continue")
        list_rv, after = _decode_continue(q["continue"])
        if list_rv < store.compacted_rv:
            raise ApiError(410, CONTINUE_TOO_OLD, "Expired")
        state = store.snapshot(rt.plural, list_rv)
    elif match == "Exact":
        if rv_param is None or rv_param == 0:
            raise errors.bad_request(
                'resourceVersionMatch: Forbidden: resourceVersionMatch "Exact" is forbidden '
                'for resourceVersion "0"'
            )
        list_rv = rv_param
        state = store.snapshot(rt.plural, list_rv)
    elif match not in ("", "NotOlderThan"):
        raise errors.bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
    else:
        list_rv = store.rv
        state = dict(store.objects.get(rt.plural, {}))
    keys = sorted(k for k in state if after is None or k > after)
    items = [state[k] for k in keys if _matches(state[k], ns, ls, fs)]
    cont: tuple[str, int | None] | None = None
    if limit and len(items) > limit:
        last = obj_key(items[limit - 1])
        remaining = len(items) - limit if ls.empty and not fs.requirements else None
        items = items[:limit]
        cont = (_encode_continue(list_rv, last), remaining)
    return items, list_rv, cont


def _line(ev_type: str, obj: Obj) -> bytes:
    return go_json({"type": ev_type, "object": obj}) + b"\n"


def _bookmark(rt: ResourceType, rv: int, initial_end: bool = False) -> bytes:
    md: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_end:
        md["annotations"] = {"k8s.io/initial-events-end": "true"}
    return _line("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md})


def _translate(ev: Event, ns: str | None, ls: LabelSelector, fs: FieldSelector) -> str | None:
    """Event type as seen through the selectors (objects moving in/out become ADDED/DELETED)."""
    if ev.type == "ADDED":
        return "ADDED" if _matches(ev.obj, ns, ls, fs) else None
    if ev.type == "DELETED":
        return "DELETED" if _matches(ev.old or ev.obj, ns, ls, fs) else None
    new_ok = _matches(ev.obj, ns, ls, fs)
    old_ok = ev.old is not None and _matches(ev.old, ns, ls, fs)
    if new_ok and old_ok:
        return "MODIFIED"
    if new_ok:
        return "ADDED"
    if old_ok:
        return "DELETED"
    return None


def watch_stream(
    emu: KubeEmulator, rt: ResourceType, ns: str | None, q: dict[str, str]
) -> AsyncIterator[bytes]:
    """Validate and subscribe synchronously (so no event is missed), then stream asynchronously."""
    store = emu.store
    ls, fs = _selectors(rt, q)
    rv = check_rv_param(q.get("resourceVersion"))
    bookmarks = q.get("allowWatchBookmarks", "").lower() in ("1", "true")
    sie_raw = q.get("sendInitialEvents")
    send_initial = sie_raw is not None and sie_raw.lower() in ("1", "true")
    match = q.get("resourceVersionMatch", "")
    if sie_raw is not None:
        causes = []
        if match != "NotOlderThan":
            causes.append(
                (
                    "FieldValueForbidden",
                    "resourceVersionMatch",
                    "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                )
            )
        if not bookmarks and send_initial:
            causes.append(
                (
                    "FieldValueForbidden",
                    "allowWatchBookmarks",
                    "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
                )
            )
        if causes:
            raise errors.invalid("meta.k8s.io", "ListOptions", "", causes)
    elif match:
        raise errors.invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            [
                (
                    "FieldValueForbidden",
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents "
                    "is provided",
                )
            ],
        )
    timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds", "").isdigit() else None
    initial: list[Obj] = []
    replay: list[Event] = []
    too_old: ApiError | None = None
    watcher: Watcher | None
    with_initial = send_initial or (sie_raw is None and (rv is None or rv == 0))
    watch_ns = ns if ns else None
    try:
        if with_initial:
            watcher, _ = store.subscribe(rt.plural, watch_ns, None)
            initial = [o for o in store.iter(rt.plural, watch_ns) if _matches(o, ns, ls, fs)]
        else:
            after = rv if (rv is not None and rv != 0 and not send_initial) else None
            if sie_raw is not None and not send_initial and rv in (None, 0):
                after = None
            watcher, replay = store.subscribe(rt.plural, watch_ns, after)
    except ApiError as e:
        if e.code != 410:
            raise
        too_old = e
        watcher = None
    start_rv = store.rv
    interval = emu.bookmark_interval

    async def gen() -> AsyncIterator[bytes]:
        if too_old is not None:
            yield _line("ERROR", too_old.status())
            return
        assert watcher is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            for obj in initial:
                yield _line("ADDED", obj)
            if send_initial:
                yield _bookmark(rt, start_rv, initial_end=True)
            for old_ev in replay:
                t = _translate(old_ev, ns, ls, fs)
                if t:
                    yield _line(t, old_ev.obj)
            next_bookmark = loop.time() + interval if bookmarks else None
            while True:
                waits = [x for x in (deadline, next_bookmark) if x is not None]
                wait_for = max(0.0, min(waits) - loop.time()) if waits else None
                try:
                    ev: Event | None = await asyncio.wait_for(watcher.queue.get(), wait_for)
                except TimeoutError:
                    now = loop.time()
                    if deadline is not None and now >= deadline:
                        return
                    if next_bookmark is not None and now >= next_bookmark:
                        yield _bookmark(rt, store.rv)
                        next_bookmark = now + interval
                    continue
                if ev is None:  # server asked us to end the stream cleanly
                    return
                t = _translate(ev, ns, ls, fs)
                if t:
                    yield _line(t, ev.obj)
        finally:
            store.unsubscribe(watcher)

    return gen()
