"""Turn Composio's usage telemetry off (or back on) for the whole process.

Why this is not just `Composio(allow_tracking=False)`: composio 0.29 wraps every public
SDK method (`ResourceMeta` -> `trace_method` in `composio.core.models.base`) and, after
each call, hands an event to `push_event`, which a daemon thread POSTs to
https://telemetry.composio.dev (plus an atexit flush of up to ~5 s). The
`allow_tracking` flag is a ContextVar set where the client is constructed, so calls made
from other tasks or `asyncio.to_thread` workers (which is how we call the SDK) still
report. There is no environment switch.

`trace_wrapper` looks `push_event` up as a global of `composio.core.models.base` each
time it runs (`from ._telemetry import push_event` binds that global), so replacing
that global stops events at the source. No other module of composio 0.29 imports
`push_event`. As a second layer `_telemetry.push_event` (for later importers) and
`_telemetry._push` (what the sender thread calls for anything already queued) are
replaced too, so nothing can reach the network.

Importing this module is cheap; composio is imported only when a function is called.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_originals: dict[str, Any] | None = None


def _drop_event(*args: Any, **kwargs: Any) -> None:
    """Stands in for composio's telemetry functions: accepts an event and sends nothing."""


def disable_composio_telemetry() -> None:
    """Make every composio telemetry path a no-op (idempotent, process-wide)."""
    global _originals
    from composio.core.models import _telemetry, base

    with _lock:
        if _originals is not None:
            return
        _originals = {
            "base.push_event": base.push_event,
            "_telemetry.push_event": _telemetry.push_event,
            "_telemetry._push": _telemetry._push,
        }
        base.push_event = _drop_event  # type: ignore[assignment]
        _telemetry.push_event = _drop_event  # type: ignore[assignment]
        _telemetry._push = _drop_event  # type: ignore[assignment]


def enable_composio_telemetry() -> None:
    """Restore composio's own telemetry functions (only if we replaced them)."""
    global _originals
    from composio.core.models import _telemetry, base

    with _lock:
        if _originals is None:
            return
        base.push_event = _originals["base.push_event"]
        _telemetry.push_event = _originals["_telemetry.push_event"]
        _telemetry._push = _originals["_telemetry._push"]
        _originals = None


def set_composio_telemetry(enabled: bool) -> None:
    if enabled:
        enable_composio_telemetry()
    else:
        disable_composio_telemetry()


def composio_telemetry_disabled() -> bool:
    return _originals is not None
