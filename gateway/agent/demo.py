"""The demo agent: a realistic turn from real input, played by the worker runtime.

A run: a title for the session's first run, reasoning, a real tool call (``search_docs``:
searches the project's README and docs/ for the prompt's words and quotes what it finds), an
approval request when the prompt asks for one, then the answer streamed in tokens at
``tokens_per_second``. Cancel is honoured between any two events.

The turn is deterministic for a given prompt and docs tree, so a run handed back by a
draining worker is continued from ``turn.prior`` (what the log already holds): each text is
resumed after its published prefix, and a tool call or approval already in the log is not
repeated.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.agent.worker import Turn, remaining

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


class DemoAgent:
    """Plays demo turns (see the module docstring).

    Args:
        docs_root: the folder whose README.md and docs/ the tool searches.
        tokens_per_second: answer pace (reasoning streams at twice that).
    """

    def __init__(self, docs_root: Path, tokens_per_second: float) -> None:
        self.root = docs_root
        self.tokens_per_second = tokens_per_second

    async def play(self, turn: Turn) -> None:
        """Play (or continue) one turn."""
        run, text, prior = turn.run, turn.input, turn.prior
        meta = await turn.patient(lambda: turn.worker.store.sessions.meta(turn.session_id))
        if meta is not None and not meta.title:
            words = text.split()
            await run.set_title(" ".join(words[:6]) + ("…" if len(words) > 6 else ""))
        query = " ".join(w for w in _WORD.findall(text) if w.lower() not in _STOP) or text
        reasoning = (
            f"The user asks: “{text.strip()[:200]}”. I will search the project's documentation "
            f"for “{query[:80]}” and answer from what it says."
        )
        await self._stream(turn, remaining(reasoning, prior.get("reasoning", "")), True, 2.0)

        call_id = f"call-{run.run_id[2:]}-1"
        done = {t["tool_call_id"]: t for t in prior.get("tools", [])}
        if call_id not in done:
            await turn.check()
            await run.tool_started(call_id, "search_docs", {"query": query[:200]})
        t0 = time.perf_counter()
        hits = await asyncio.to_thread(search_docs, self.root, query)
        if done.get(call_id, {}).get("status") != "completed":
            await asyncio.sleep(0.2)  # a real tool takes a moment; keeps the card visible
            duration = round((time.perf_counter() - t0) * 1000, 1)
            output = "\n".join(f"{p}:{n}: {t}" for p, n, t in hits) or "no matches"
            await turn.check()
            await run.tool_completed(call_id, output, duration_ms=duration)

        if _APPROVAL.search(text):
            aid = f"ap-{run.run_id[2:]}"
            prompt = f"Allow the agent to use what it found about “{query[:60]}”?"
            if await turn.approval(aid, prompt) != "approve":
                denied = "Understood: you denied the request, so I will stop here."
                await self._stream(turn, remaining(denied, prior.get("text", "")))
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
        await self._stream(turn, remaining(answer, prior.get("text", "")))
        await turn.check()
        await run.complete()

    async def _stream(
        self, turn: Turn, text: str, reasoning: bool = False, pace: float = 1.0
    ) -> None:
        delay = 1.0 / (self.tokens_per_second * pace)
        emit = turn.run.reasoning_delta if reasoning else turn.run.text_delta
        async for piece in _paced(tokens(text), delay):
            await turn.check()
            await emit(piece)


async def _paced(pieces: list[str], delay: float) -> AsyncIterator[str]:
    start = time.monotonic()
    for i, piece in enumerate(pieces):
        # Pace against the clock, not per sleep, so publish time does not slow the run.
        wait = start + i * delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        yield piece
