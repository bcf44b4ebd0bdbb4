"""Worker: the demo agent worker, consuming browser commands and publishing realistic runs.

Commands arrive on the global command stream through the ``workers`` consumer group
(XREADGROUP); a command is acked when its run has ended, so a worker that crashes mid-run
leaves it pending and another worker reclaims it with XAUTOCLAIM after ``claim_idle``.

A run, from real input: a title for the session's first run, reasoning, a real tool call
(``search_docs``: searches the project's README and docs/ for the prompt's words and quotes
what it finds), an approval request when the prompt asks for one, then the answer streamed
in tokens at ``tokens_per_second``. Cancel is honoured between any two events. Each run is
played under a lease (``gateway.leases``), so a worker that dies mid-run has its run ended
as interrupted by a reaper, and its pending command is reclaimed and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.leases import RunLease, reap_forever
from gateway.publisher import Publisher, Run
from gateway.settings import Settings
from gateway.streams import PublishRejected, Streams

log = logging.getLogger(__name__)

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{2,}")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "that",
        "this",
        "from",
        "what",
        "how",
        "does",
        "can",
        "you",
        "are",
        "was",
        "were",
        "will",
        "into",
        "about",
        "please",
        "tell",
        "show",
        "explain",
        "give",
        "have",
        "has",
        "why",
        "when",
        "which",
        "who",
        "our",
        "your",
        "its",
    ]
)
_APPROVAL = re.compile(r"\b(approv\w*|permission|confirm\w*)\b", re.IGNORECASE)
_TOKEN = re.compile(r"\s*\S{1,6}|\s+")


class Cancelled(Exception):
    """The run was cancelled by a browser."""


class LeaseLost(Exception):
    """The run's lease was lost (the run was ended as interrupted): stop publishing."""


def search_docs(root: Path, query: str, limit: int = 3) -> list[tuple[str, int, str]]:
    """Lines of ``root``'s README.md and docs/*.md that mention the query's words.

    Returns up to ``limit`` ``(relative path, line number, line)`` tuples, best first
    (most distinct query words on the line).
    """
    words = {w.lower() for w in _WORD.findall(query)} - _STOP
    if not words:
        return []
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    hits: list[tuple[int, str, int, str]] = []
    for path in files:
        if not path.is_file():
            continue
        for no, line in enumerate(path.read_text("utf-8", "replace").splitlines(), 1):
            text = line.strip()
            if len(text) < 20:
                continue
            score = sum(1 for w in words if w in text.lower())
            if score:
                hits.append((score, str(path.relative_to(root)), no, text))
    hits.sort(key=lambda h: (-h[0], h[1], h[2]))
    return [(p, n, t) for _, p, n, t in hits[:limit]]


def tokens(text: str) -> list[str]:
    """Split text into LLM-sized pieces (about 4 characters each, spaces kept)."""
    return _TOKEN.findall(text)


class DemoWorker:
    """Runs demo agent turns for commands from the ``workers`` consumer group.

    Args:
        streams: the Redis layer; publisher: where run events go; settings: pace, name and
            ``command_claim_idle``.
    A command unacked for ``settings.command_claim_idle`` seconds is reclaimed.
    """

    def __init__(self, streams: Streams, publisher: Publisher, settings: Settings) -> None:
        self.streams = streams
        self.publisher = publisher
        self.settings = settings
        self.name = settings.worker_name or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.claim_idle = settings.command_claim_idle
        self.root = settings.docs_dir.parent
        self._tasks: set[asyncio.Task[None]] = set()
        self._leases: dict[str, RunLease] = {}

    async def run_forever(self) -> None:
        """Consume commands until cancelled."""
        await self.streams.ensure_command_group()
        reaper = asyncio.create_task(
            reap_forever(self.streams, self.publisher, self.settings.run_lease_ttl / 3)
        )
        self._tasks.add(reaper)
        last_claim = 0.0
        while True:
            try:
                if time.monotonic() - last_claim > self.claim_idle / 2:
                    last_claim = time.monotonic()
                    for cid, fields in await self.streams.claim_stale_commands(
                        self.name, int(self.claim_idle * 1000)
                    ):
                        self._spawn(cid, fields)
                t0 = time.monotonic()
                batch = await self.streams.read_commands(self.name, 10, 1000)
                for cid, fields in batch:
                    self._spawn(cid, fields)
                if not batch and time.monotonic() - t0 < 0.05:
                    # The embedded fakeredis does not honour BLOCK; do not spin.
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                for task in self._tasks:
                    task.cancel()
                raise
            except Exception:
                log.exception("worker: command loop error; retrying")
                await asyncio.sleep(1.0)

    def _spawn(self, command_id: str, fields: dict[str, str]) -> None:
        task = asyncio.create_task(self._handle(command_id, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, command_id: str, fields: dict[str, str]) -> None:
        try:
            if fields.get("kind") == "run":
                meta = await self.streams.meta(fields["session_id"])
                # A reclaimed command whose run already ended must not play again.
                if meta and meta.run_id == fields["run_id"] and meta.status == "running":
                    await self.run_turn(fields["session_id"], fields["run_id"], fields["input"])
        except asyncio.CancelledError:
            raise  # the worker is stopping; the command stays pending for another worker
        except Exception:
            log.exception("worker: command %s failed", command_id)
        await self.streams.ack_command(command_id)

    async def run_turn(self, session_id: str, run_id: str, text: str) -> None:
        """Play one run whose ``run.started`` the gateway already published."""
        run = Run(self.publisher, session_id, run_id)
        lease = RunLease(self.streams, session_id, run_id, self.name, self.settings.run_lease_ttl)
        async with lease:
            if lease.lost:
                log.info("worker: run %s is held or ended elsewhere; not playing it", run_id)
                return
            self._leases[run_id] = lease
            try:
                await self._play(run, text)
            finally:
                del self._leases[run_id]

    async def _play(self, run: Run, text: str) -> None:
        try:
            await self._turn(run, text)
        except LeaseLost:
            log.warning("worker: lost the lease of %s; stopping it", run.run_id)
        except Cancelled:
            await run.cancel()
        except PublishRejected:
            log.info("worker: run %s ended elsewhere", run.run_id)
        except Exception as exc:
            log.exception("worker: run %s failed", run.run_id)
            await run.fail(f"{type(exc).__name__}: {exc}")

    async def _check_cancel(self, run: Run) -> None:
        lease = self._leases.get(run.run_id)
        if lease is not None and lease.lost:
            raise LeaseLost()
        if await self.streams.cancel_requested(run.session_id, run.run_id):
            raise Cancelled()

    async def _stream(
        self, run: Run, text: str, reasoning: bool = False, pace: float = 1.0
    ) -> None:
        delay = 1.0 / (self.settings.tokens_per_second * pace)
        emit = run.reasoning_delta if reasoning else run.text_delta
        async for piece in self._paced(tokens(text), delay):
            await self._check_cancel(run)
            await emit(piece)

    async def _paced(self, pieces: list[str], delay: float) -> AsyncIterator[str]:
        start = time.monotonic()
        for i, piece in enumerate(pieces):
            # Pace against the clock, not per sleep, so publish time does not slow the run.
            wait = start + i * delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            yield piece

    async def _turn(self, run: Run, text: str) -> None:
        meta = await self.streams.meta(run.session_id)
        if meta is not None and not meta.title:
            words = text.split()
            await run.set_title(" ".join(words[:6]) + ("…" if len(words) > 6 else ""))
        query = " ".join(w for w in _WORD.findall(text) if w.lower() not in _STOP) or text
        await self._stream(
            run,
            f"The user asks: “{text.strip()[:200]}”. I will search the project's documentation "
            f"for “{query[:80]}” and answer from what it says.",
            reasoning=True,
            pace=2.0,
        )
        call_id = f"call-{run.run_id[2:]}-1"
        await run.tool_started(call_id, "search_docs", {"query": query[:200]})
        t0 = time.perf_counter()
        hits = await asyncio.to_thread(search_docs, self.root, query)
        await asyncio.sleep(0.2)  # a real tool takes a moment; keeps the card visible
        duration = round((time.perf_counter() - t0) * 1000, 1)
        output = "\n".join(f"{p}:{n}: {t}" for p, n, t in hits) or "no matches"
        await run.tool_completed(call_id, output, duration_ms=duration)

        if _APPROVAL.search(text) and not await self._approved(run, query):
            await self._stream(run, "Understood: you denied the request, so I will stop here.")
            await run.complete()
            return

        if hits:
            quotes = "\n".join(f"- *{p}, line {n}*: {t[:240]}" for p, n, t in hits)
            answer = (
                f"Here is what the documentation says about **{query[:80]}**:\n\n{quotes}\n\n"
                f"I found {len(hits)} relevant passage{'s' if len(hits) > 1 else ''}; "
                "the first is the most specific match."
            )
        else:
            answer = (
                f"I searched the project's README and docs for **{query[:80]}** and found no "
                "passage that mentions it. Try words such as *offset*, *reconnect* or *replica*."
            )
        await self._stream(run, answer)
        await run.complete()

    async def _approved(self, run: Run, query: str) -> bool:
        """Ask for approval and wait for a browser's decision; True when approved."""
        aid = f"ap-{run.run_id[2:]}"
        await run.request_approval(
            aid, f"Allow the agent to use what it found about “{query[:60]}”?"
        )
        while True:
            state = await self.streams.approval_state(run.session_id, aid)
            if state in ("approve", "deny"):
                break
            await self._check_cancel(run)
            await asyncio.sleep(0.1)
        return state == "approve"
