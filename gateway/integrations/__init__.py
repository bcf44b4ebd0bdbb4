"""Integrations: agent frameworks played as gateway workers (``gateway.agent.worker.Agent``).

- :mod:`gateway.integrations.pydantic_ai`: a pydantic-ai ``Agent`` (``run_stream_events``).
- :mod:`gateway.integrations.openai_agents`: an OpenAI Agents SDK agent
  (``Runner.run_streamed``).

This module holds what both share: :class:`Emitter` (publishes a framework's stream as our
events, skipping what a handed-back run's earlier holder already published),
:func:`until_cancelled` (stops the framework's run when a browser cancels),
:func:`approve_tool` (a tool call that needs approval asks the session's viewers) and
:func:`history` (the session's earlier turns, for multi-turn chats), :func:`title_session`;
and
:func:`run_worker`, the process entry point. The framework packages
are optional (``pip install 'agent-stream-gateway[integrations]'``); this module imports
neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.agent.publisher import Publisher
from gateway.agent.worker import Agent, Turn, Worker
from gateway.core.events import valid_id
from gateway.settings import Settings
from gateway.store import Store, snapshots

T = TypeVar("T")
CANCEL_POLL_S = 0.25


class Emitter:
    """Publishes one turn's text, reasoning and tool events through ``turn.run``.

    A run handed back by a draining worker is played again from its input: text and
    reasoning that repeat what the log already holds (``turn.prior``) are skipped up to the
    first streamed piece that differs, and tool calls whose id is already in the log are not
    announced (or completed) again. A deterministic agent therefore continues seamlessly; a
    sampling model's second answer is appended after the first one's published prefix.
    """

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.text = ""  # everything streamed this time
        self.reasoning = ""
        self._prior_text = str(turn.prior.get("text") or "")
        self._prior_reasoning = str(turn.prior.get("reasoning") or "")
        tools = turn.prior.get("tools") or []
        self._started = {t["tool_call_id"] for t in tools}
        self._completed = {t["tool_call_id"] for t in tools if t.get("status") == "completed"}
        self._t0: dict[str, float] = {}
        self.denied: set[str] = set()  # tool calls a viewer refused: their output is an error

    @staticmethod
    def _fresh(prior: str, before: str, piece: str) -> str:
        """The part of ``piece`` (streamed after ``before``) not already in ``prior``."""
        if len(before) >= len(prior) or not prior.startswith(before):
            return piece
        overlap = prior[len(before) : len(before) + len(piece)]
        if piece.startswith(overlap):
            return piece[len(overlap) :]
        return piece  # diverged: the new answer goes on from here

    async def text_delta(self, piece: str) -> None:
        """``message.delta`` (nothing for an empty piece)."""
        fresh = self._fresh(self._prior_text, self.text, piece)
        self.text += piece
        if fresh:
            await self.turn.run.text_delta(fresh)

    async def reasoning_delta(self, piece: str) -> None:
        """``reasoning.delta`` (nothing for an empty piece)."""
        fresh = self._fresh(self._prior_reasoning, self.reasoning, piece)
        self.reasoning += piece
        if fresh:
            await self.turn.run.reasoning_delta(fresh)

    async def tool_started(self, tool_call_id: str, name: str, args: dict[str, Any]) -> None:
        """``tool.started``; the call's clock starts."""
        self._t0[tool_call_id] = time.perf_counter()
        if tool_call_id not in self._started:
            self._started.add(tool_call_id)
            await self.turn.run.tool_started(tool_call_id, name, args)

    async def tool_completed(self, tool_call_id: str, output: str, is_error: bool) -> None:
        """``tool.completed`` with the time since :meth:`tool_started`."""
        if tool_call_id in self._completed:
            return
        self._completed.add(tool_call_id)
        t0 = self._t0.pop(tool_call_id, None)
        took = round((time.perf_counter() - t0) * 1000, 1) if t0 is not None else 0.0
        await self.turn.run.tool_completed(
            tool_call_id, output, is_error=is_error or tool_call_id in self.denied, duration_ms=took
        )


async def until_cancelled(turn: Turn, body: Coroutine[Any, Any, T]) -> T:
    """Run ``body`` (a framework's run) while polling ``turn.check()``; a cancel request
    (or a lost lease) cancels ``body`` and raises :class:`~gateway.agent.worker.Cancelled`
    (or ``LeaseLost``), even while the framework waits on its model.
    """
    task = asyncio.create_task(body)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_S)
            if done:
                return task.result()
            await turn.check()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def approve_tool(turn: Turn, tool_call_id: str, name: str, args: Any) -> bool:
    """Ask the session's viewers whether a tool call may run: publishes
    ``approval.requested`` (the approval id is the tool call id when it is a valid id, else a
    digest of it) and waits for ``approval.resolved``; True when approved.

    Raises:
        Cancelled, LeaseLost: while waiting.
    """
    approval_id = tool_call_id
    if not valid_id(approval_id):
        approval_id = "ap-" + hashlib.sha256(tool_call_id.encode()).hexdigest()[:20]
    if isinstance(args, str):  # JSON text from a model: shown like a dict's arguments
        with contextlib.suppress(ValueError):
            args = json.loads(args)
    shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, default=str)
    prompt = f"Allow the agent to call {name}({shown[:300]})?"
    return await turn.approval(approval_id, prompt) == "approve"


async def title_session(turn: Turn) -> None:
    """Name a session that has no title after its first input (``session.title``: its first
    six words), as the demo agent does, so the session list shows something readable."""
    meta = await turn.patient(lambda: turn.worker.store.sessions.meta(turn.session_id))
    words = turn.input.split()
    if meta is not None and not meta.title and words:
        await turn.run.set_title(" ".join(words[:6]) + ("…" if len(words) > 6 else ""))


async def history(turn: Turn, limit: int = 20) -> list[tuple[str, str]]:
    """The session's earlier runs as ``(input, answer text)`` pairs, oldest first (at most
    ``limit``), from its folded snapshot; runs without input or answer are left out."""
    res = await turn.patient(lambda: snapshots.load(turn.worker.store.sessions, turn.session_id))
    if res is None:
        return []
    pairs = [
        (str(r.get("input") or ""), str(r.get("text") or ""))
        for r in res[1].get("runs", [])
        if r.get("run_id") != turn.run_id
    ]
    return [p for p in pairs if p[0] and p[1]][-limit:]


def worker_for(agent: Agent, store: Store, publisher: Publisher, settings: Settings) -> Worker:
    """A :class:`~gateway.agent.worker.Worker` playing runs with ``agent`` (an adapter of
    this package): consume commands, hold leases, honour cancel and drain."""
    return Worker(store, publisher, settings, agent)


async def run_worker(agent: Agent, settings: Settings | None = None) -> None:
    """Play runs with ``agent`` until SIGTERM/SIGINT, like ``gateway worker`` does for the
    demo agent: Redis from ``REDIS_URL`` (and ``GATEWAY_*`` settings) unless ``settings``
    is given; SIGTERM drains (runs finish within ``GATEWAY_WORKER_DRAIN_TIMEOUT`` or are
    handed back to another worker), then this returns.

    Raises:
        ValueError: no Redis URL configured.
    """
    import signal

    from gateway.store.client import connect

    settings = settings or Settings()
    if not settings.redis_url:
        raise ValueError("a worker needs Redis: set REDIS_URL")
    redis = connect(settings, role="worker")
    store = Store(redis, settings.key_prefix)
    worker = worker_for(agent, store, Publisher.from_settings(store, settings), settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.begin_drain)
    try:
        await worker.run_forever()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await redis.aclose()
