"""asyncio helpers: stopping a background task without swallowing the caller's cancellation.

``task.cancel()`` followed by ``with suppress(BaseException): await task`` also swallows a
``CancelledError`` aimed at the *caller* while it waits, so a cancelled request or shutdown
would carry on as if nothing happened. :func:`cancel_and_wait` tells the two apart with
``Task.cancelling()`` (Python 3.11): a cancellation requested while it waits is the caller's.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[object] | None, what: str = "task") -> None:
    """Cancel ``task`` and wait until it has finished.

    The task's own ``CancelledError`` is expected and dropped; an exception it ended with is
    logged (with ``what``), not raised. A cancellation of the caller while it waits is
    re-raised once the wait is over, never swallowed.

    Raises:
        asyncio.CancelledError: the calling task itself was cancelled.
    """
    if task is None:
        return
    me = asyncio.current_task()
    # Counted before the wait: cleanup that runs because the caller was already cancelled
    # (an __aexit__ on the way out) must still be able to stop its helpers.
    before = me.cancelling() if me is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if me is not None and me.cancelling() > before:
            raise
    except Exception:
        log.exception("%s ended with an error while being stopped", what)
