"""Traffic for a chaos run: HTTP clients that start, cancel and approve runs, and
manual-commit viewers that attach, read, ack and let go at random, with and without
``Last-Event-ID``, against whichever gateway is up."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtests.chaos.topology import Node

PROMPTS = [
    "How does reconnect resume from the stored offset?",
    "What happens to a replica that is drained?",
    "Explain epochs and resets",
    "Ask for approval before quoting the docs on offsets",
    "Please confirm, then explain the hub",
    "What is a lease and who reaps runs?",
]
ERRORS = (httpx.HTTPError, OSError, TimeoutError, ValueError)


@dataclass
class Viewer:
    """One manual-commit consumer of a session: what it received, in arrival order."""

    sid: str
    cid: str = ""
    received: list[str] = field(default_factory=list)  # offsets, repeats included
    resets: list[str] = field(default_factory=list)
    last: str | None = None  # the last offset processed
    attaches: int = 0
    with_last_event_id: int = 0


@dataclass
class Traffic:
    """Drives ``sessions`` through ``gateways`` until :meth:`stop`."""

    gateways: list[Node]
    sessions: list[str]
    rng: random.Random
    viewers_per_session: int = 2
    accepted: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    viewers: list[Viewer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = asyncio.Event()
        self._no_new_runs = asyncio.Event()
        self._drivers: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, read=3.0),
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=50),
        )
        for sid in self.sessions:
            self.accepted[sid] = []
            self.viewers.extend(Viewer(sid) for _ in range(self.viewers_per_session))

    def _gw(self) -> Node:
        up = [g for g in self.gateways if g.state == "up"]
        return self.rng.choice(up or self.gateways)

    async def _post(self, path: str, body: Any = None) -> httpx.Response:
        return await self._client.post(self._gw().url + path, json=body)

    async def _get(self, path: str) -> httpx.Response:
        return await self._client.get(self._gw().url + path)

    async def run(self) -> None:
        """Every driver, approver and viewer, until :meth:`stop`."""
        self._drivers = [asyncio.create_task(self.drive(sid)) for sid in self.sessions]
        tasks = [self.view(v) for v in self.viewers]
        tasks.append(self.approve())
        await asyncio.gather(*self._drivers, *tasks)

    def stop_runs(self) -> None:
        """No new runs (the faults stopped); approvals are still answered, viewers still
        read, so every run can end."""
        self._no_new_runs.set()

    def stop(self) -> None:
        self._no_new_runs.set()
        self._stop.set()

    async def close(self) -> None:
        await self._client.aclose()

    async def _pause(self, lo: float, hi: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.rng.uniform(lo, hi)):
                await self._stop.wait()

    # --- runs --------------------------------------------------------------------------
    async def drive(self, sid: str) -> None:
        """Start runs one after the other; cancel some; wait for each to end."""
        while not self._no_new_runs.is_set():
            try:
                r = await self._post(
                    f"/v1/sessions/{sid}/runs", {"input": self.rng.choice(PROMPTS)}
                )
            except ERRORS:
                self.counts["start_errors"] += 1  # maybe started: the log will tell
                await self._pause(0.2, 1.0)
                continue
            if r.status_code == 202:
                run_id = r.json()["run_id"]
                self.accepted[sid].append(run_id)
                self.counts["runs_accepted"] += 1
                if self.rng.random() < 0.25:
                    await self._pause(0.2, 3.0)
                    await self._cancel(sid, run_id)
            elif r.status_code == 409:
                self.counts["starts_refused_run_active"] += 1
            else:
                self.counts[f"start_{r.status_code}"] += 1
            await self._until_idle(sid, 40.0)
            await self._pause(0.1, 1.0)

    async def runs_done(self) -> None:
        """Until every driver stopped starting runs (after :meth:`stop_runs`)."""
        await asyncio.gather(*self._drivers)

    async def _cancel(self, sid: str, run_id: str) -> None:
        for _ in range(3):
            try:
                r = await self._post(f"/v1/sessions/{sid}/runs/{run_id}/cancel")
            except ERRORS:
                await asyncio.sleep(0.3)
                continue
            self.counts[f"cancel_{r.status_code}"] += 1
            return

    async def _until_idle(self, sid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._no_new_runs.is_set():
            with contextlib.suppress(*ERRORS):
                r = await self._get(f"/v1/sessions/{sid}")
                if r.status_code == 200 and r.json()["status"] != "running":
                    return
            await self._pause(0.2, 0.4)

    async def approve(self) -> None:
        """Answer pending approvals from any gateway, now and then twice (the second: 409)."""
        answered: set[str] = set()
        while not self._stop.is_set():
            for sid in self.sessions:
                with contextlib.suppress(*ERRORS):
                    r = await self._get(f"/v1/sessions/{sid}/snapshot")
                    if r.status_code != 200:
                        continue
                    for p in r.json()["state"]["pending_approvals"]:
                        aid = p["approval_id"]
                        decision = self.rng.choice(["approve", "approve", "deny"])
                        path = f"/v1/sessions/{sid}/approvals/{aid}"
                        for _ in range(2 if self.rng.random() < 0.3 else 1):
                            a = await self._post(path, {"decision": decision})
                            key = "approval_repeat" if aid in answered else "approval"
                            self.counts[f"{key}_{a.status_code}"] += 1
                            answered.add(aid)
            await self._pause(0.2, 0.5)

    # --- viewers -----------------------------------------------------------------------
    async def view(self, v: Viewer) -> None:
        """Attach, read for a while, ack, let go; again and again."""
        while not self._stop.is_set():
            with contextlib.suppress(*ERRORS):
                await self.attach(v, hold=self.rng.uniform(0.5, 5.0))
            await self._pause(0.0, 1.0)

    async def attach(self, v: Viewer, *, hold: float, until: str | None = None) -> None:
        """One attachment for ``hold`` seconds, or until offset ``until`` was received."""
        if not v.cid:
            r = await self._post(
                f"/v1/sessions/{v.sid}/connections", {"from": "start", "commit": "manual"}
            )
            if r.status_code != 201:
                self.counts[f"connection_{r.status_code}"] += 1
                return
            v.cid = r.json()["connection_id"]
        headers = {}
        if v.last and (until is not None or self.rng.random() < 0.5):
            headers["Last-Event-ID"] = v.last
            v.with_last_event_id += 1
        gw = self._gw()
        url = f"{gw.url}/v1/sessions/{v.sid}/connections/{v.cid}/events"
        acked = v.last
        try:
            async with (
                asyncio.timeout(hold),
                self._client.stream("GET", url, headers=headers) as r,
            ):
                if r.status_code != 200:
                    self.counts[f"attach_{r.status_code}"] += 1
                    return
                v.attaches += 1
                next_ack = time.monotonic() + self.rng.uniform(0.2, 1.0)
                async for event, fid in _frames(r):
                    if event == "close":
                        self.counts["attach_closed"] += 1
                        break
                    if event == "reset":
                        v.resets.append(fid)
                        v.last = fid
                        continue
                    v.received.append(fid)
                    v.last = fid
                    if until is not None and fid == until:
                        break
                    if time.monotonic() > next_ack and v.last != acked:
                        await self._ack(v)
                        acked = v.last
                        next_ack = time.monotonic() + self.rng.uniform(0.2, 1.0)
        except TimeoutError:
            pass  # held long enough: let go
        if v.last and v.last != acked and (until is not None or self.rng.random() < 0.7):
            await self._ack(v)  # what a careful client does before it lets go

    async def _ack(self, v: Viewer) -> None:
        with contextlib.suppress(*ERRORS):
            r = await self._post(
                f"/v1/sessions/{v.sid}/connections/{v.cid}/ack", {"offset": v.last}
            )
            self.counts[f"ack_{r.status_code}"] += 1


async def _frames(r: httpx.Response) -> Any:
    """(event, id) of every frame with an id."""
    event, fid = "message", ""
    async for line in r.aiter_lines():
        if not line:
            if fid or event == "close":
                yield event, fid
            event, fid = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("id:"):
            fid = line[3:].strip()
