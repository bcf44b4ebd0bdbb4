"""Issue 4, replicas: three real gateway processes behind real nginx (configured from
deploy/nginx.conf), a real redis-server, a publisher process, and resilient SSE viewers that
resume from their server-side stored offset (they never send Last-Event-ID unless a test
says so). A replica is SIGKILLed, one is drained with SIGTERM, and all three are restarted
one after the other while 200 viewers watch 20 running sessions; every viewer's sequence is
checked against the log in Redis (XRANGE) and the publisher's offsets. ``pytest -s`` prints
the measured figures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from gateway.live.hub import Hub, Subscriber
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.client import connect
from tests.lb import (
    Nginx,
    PublisherProcess,
    Replica,
    log_matches,
    quantiles,
    start_viewers,
    stop_viewers,
    upstream_counts,
    wait_caught_up,
)
from tests.support import RedisServer

pytestmark = pytest.mark.asyncio

# Deployed defaults (heartbeat 15 s, auto-commit 0.25 s, drain spread 1 s, drain timeout 10 s).
DRAIN_TIMEOUT = Settings().drain_timeout
DRAIN_SPREAD = Settings().drain_spread
EXIT_MARGIN = 3.0  # seconds allowed on top of the drain timeout for the process to exit
# The servers keep deploy/nginx.conf's own parameters (`max_fails=0`: with passive failure
# accounting a replica that failed once during a restart never counted as healthy again,
# because an SSE request only "succeeds" when the stream ends).
LB_SERVER_PARAMS = None
ROLLING_RATE = 200  # events/s over the 20 sessions of the rolling restart


@dataclass
class Cluster:
    redis: RedisServer
    replicas: list[Replica]
    lb: Nginx
    store: Store  # to read the logs back

    def replica(self, addr: str) -> Replica:
        return next(r for r in self.replicas if r.addr == addr)


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A fresh Redis, three replicas and nginx per test: a test may kill any of them."""
    with contextlib.ExitStack() as stack:
        redis = RedisServer()
        stack.callback(redis.stop)
        replicas = [Replica(redis.url) for _ in range(3)]
        for r in replicas:
            stack.callback(r.stop)
        await asyncio.gather(*(r.ready() for r in replicas))
        lb = Nginx([r.port for r in replicas], server_params=LB_SERVER_PARAMS)
        stack.callback(lb.stop)
        client = connect(Settings(redis_url=redis.url), role="test-reader")
        try:
            yield Cluster(redis, replicas, lb, Store(client))
        finally:
            await client.aclose()


def session_ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"rep-{tag}-{i}" for i in range(n)]


def ends(attempts: list[str]) -> str:
    return ", ".join(f"{k} ×{n}" for k, n in Counter(attempts).most_common())


@contextlib.asynccontextmanager
async def publishing(
    cluster: Cluster, sessions: list[str], rate: float
) -> AsyncIterator[PublisherProcess]:
    """A publisher process for the duration of the block (``await pub.stop()`` inside)."""
    pub = PublisherProcess(cluster.redis.url, sessions, rate)
    try:
        yield pub
    finally:
        pub.kill()


async def test_sigkill_replica_viewers_resume_on_survivors(cluster: Cluster) -> None:
    """SIGKILL one replica mid-stream: its viewers' streams break, they reconnect through
    nginx to a survivor and resume from their stored offsets with no gap. With auto commit,
    what the dead replica wrote but had not committed yet (at most ``auto_commit_interval``
    of events) is delivered again; viewers that send Last-Event-ID, as EventSource does,
    get no duplicate at all."""
    sessions = session_ids(6)
    commit_window = Settings().auto_commit_interval
    async with publishing(cluster, sessions, rate=60) as pub:
        viewers, tasks = await start_viewers(cluster.lb.url, sessions, per_session=10)
        try:
            browsers, more = await start_viewers(
                cluster.lb.url, sessions, per_session=5, last_event_id=True
            )
            tasks += more
            everyone = viewers + browsers
            await asyncio.sleep(1.5)
            before = upstream_counts(everyone)
            victim = cluster.replica(before.most_common(1)[0][0])
            served = [v for v in everyone if v.current and v.current.upstream == victim.addr]
            killed_at = {id(v): len(v.attempts) - 1 for v in served}
            t_kill = time.monotonic()
            victim.kill()
            await asyncio.sleep(3)
            await pub.stop()
            await wait_caught_up(everyone, pub.last_seqs, timeout=20)
        finally:
            await stop_viewers(tasks)
    await log_matches(cluster.store, pub.offsets)

    killed = [v.attempts[killed_at[id(v)]] for v in served]
    resumed = [v.attempts[killed_at[id(v)] + 1 :] for v in served]
    first_ok = [next(a for a in after if a.status == 200) for after in resumed]
    first_event = [next(a for a in after if a.events) for after in resumed]
    dups = [d for v in viewers for d in v.duplicates()]
    print(
        f"\nSIGKILL: {len(everyone)} viewers ({len(viewers)} resuming from the stored offset, "
        f"{len(browsers)} sending Last-Event-ID) of {len(sessions)} sessions on 3 replicas "
        f"{dict(before)}; killed {victim.addr} serving {len(served)} viewers "
        f"({sum(v in served for v in viewers)} + {sum(v in served for v in browsers)})\n"
        f"  published {pub.published} events at {pub.actual_rate:.0f}/s, "
        f"deliveries {sum(len(v.seqs) for v in everyone)}\n"
        f"  killed streams ended by: {ends([a.end for a in killed])}\n"
        f"  new stream open on a survivor, after the kill: "
        f"{quantiles([a.t_open - t_kill for a in first_ok])} (the viewer waits 0.5 s first; "
        f"request to 200: {quantiles([a.t_open - a.t_request for a in first_ok])})\n"
        f"  first event on the survivor, after the kill: "
        f"{quantiles([a.t_first - t_kill for a in first_event])}\n"
        f"  survivors now serve {dict(upstream_counts(everyone))}\n"
        f"  stored-offset viewers: gaps {sum(v.gaps for v in viewers)}, "
        f"duplicates {sum(v.dups for v in viewers)} in {sum(bool(v.dups) for v in viewers)} "
        f"viewers (first copy received before the kill by: "
        f"{quantiles([t_kill - first for _, first, _ in dups])}; commit window "
        f"{commit_window * 1000:.0f} ms)\n"
        f"  Last-Event-ID viewers: gaps {sum(v.gaps for v in browsers)}, "
        f"duplicates {sum(v.dups for v in browsers)}\n"
        f"  reconnects {sum(v.reconnects for v in everyone)}"
    )
    assert len(served) >= 5
    assert all(a.upstream != victim.addr for after in resumed for a in after if a.status)
    # No gap anywhere; Last-Event-ID viewers: exactly the log, once.
    assert sum(v.gaps for v in everyone) == 0
    problems = [p for v in browsers for p in v.problems(pub.last_seqs[v.sid])]
    assert not problems, problems[:5]
    # Stored-offset viewers: exactly the log once de-duplicated by offset, and the only events
    # delivered twice are ones the killed replica wrote within the auto-commit window.
    for v in viewers:
        assert sorted(set(v.seqs)) == list(range(v.start_seq + 1, pub.last_seqs[v.sid] + 1))
        assert not v.foreign and not v.resets
        assert not v.dups or v in served
    # (A first copy may arrive just after the kill: it was in flight. 0.5 s of slack for the
    # gateway's and this process's scheduling on a busy machine.)
    assert all(t_kill - commit_window - 0.5 < first < t_kill + 0.5 for _, first, _ in dups)
    assert all(second > t_kill for _, _, second in dups)


async def test_sigterm_drains_replica(cluster: Cluster) -> None:
    """SIGTERM one replica mid-stream: it refuses new streams (503 draining, then connection
    refused; nginx passes such requests to another replica), ends each open stream after
    committing its offset with ``retry: 250`` + ``event: close`` draining, spread over
    ``drain_spread``, and exits well within ``drain_timeout``; viewers resume elsewhere
    with no gap and no duplicate."""
    sessions = session_ids(6)
    async with publishing(cluster, sessions, rate=60) as pub:
        viewers, tasks = await start_viewers(cluster.lb.url, sessions, per_session=10)
        try:
            await asyncio.sleep(1.5)
            before = upstream_counts(viewers)
            victim = cluster.replica(before.most_common(1)[0][0])
            served = [v for v in viewers if v.current and v.current.upstream == victim.addr]
            drained_at = {id(v): len(v.attempts) - 1 for v in served}
            async with httpx.AsyncClient(base_url=victim.url, timeout=2) as direct:
                assert (await direct.get("/readyz")).status_code == 200  # a kept-alive connection
                t_term = time.monotonic()
                exited = asyncio.create_task(victim.drain(DRAIN_TIMEOUT + EXIT_MARGIN))
                probes = await probe_draining(direct, sessions[0])
            exit_s, code = await exited
            await asyncio.sleep(2)
            await pub.stop()
            await wait_caught_up(viewers, pub.last_seqs, timeout=20)
        finally:
            await stop_viewers(tasks)
    await log_matches(cluster.store, pub.offsets)

    drained = [v.attempts[drained_at[id(v)]] for v in served]
    after = [v.attempts[drained_at[id(v)] + 1] for v in served]
    moved = [a for a in after if a.status == 200 and a.upstream != victim.addr]
    statuses = Counter(a.status for v in viewers for a in v.attempts)
    print(
        f"\nSIGTERM: {len(viewers)} viewers of {len(sessions)} sessions on 3 replicas "
        f"{dict(before)}; drained {victim.addr} serving {len(served)} viewers\n"
        f"  process exited {exit_s:.2f} s after SIGTERM (code {code}; limit "
        f"{DRAIN_TIMEOUT:.0f} s + {EXIT_MARGIN:.0f} s)\n"
        f"  direct requests to it after SIGTERM: {ends(probes)}\n"
        f"  its streams ended by: {ends([a.end for a in drained])}, retry hints "
        f"{sorted({a.retry_ms for a in drained}, key=str)}\n"
        f"  closes after SIGTERM: {quantiles([a.t_end - t_term for a in drained])} "
        f"(spread {DRAIN_SPREAD:.0f} s)\n"
        f"  viewers moved to another replica: {len(moved)}/{len(served)}, next stream open "
        f"after the close: "
        f"{quantiles([n.t_open - d.t_end for d, n in zip(drained, after, strict=True)])}\n"
        f"  statuses of all stream requests through nginx: {dict(statuses)}\n"
        f"  published {pub.published} events at {pub.actual_rate:.0f}/s, deliveries "
        f"{sum(len(v.seqs) for v in viewers)}, gaps {sum(v.gaps for v in viewers)}, "
        f"duplicates {sum(v.dups for v in viewers)}, "
        f"reconnects {sum(v.reconnects for v in viewers)}"
    )
    assert len(served) >= 5
    # How long the drain took is printed above (a figure, not a test: the machine is shared).
    assert code == -15
    assert all(a.end == "close:draining+eof" and a.retry_ms == 250 for a in drained)
    assert len(moved) == len(served)
    assert set(statuses) == {200}, "nginx passed a refusal on to a viewer"
    # Once it answered "draining" (or refused the connection), it accepted no new stream.
    refusing = next((i for i, p in enumerate(probes) if "draining" in p or "Error" in p), None)
    assert refusing is not None, probes
    assert all(
        p in ("readyz 503 draining", "stream 503 draining Retry-After 1") or "Error" in p
        for p in probes[refusing:]
    ), probes
    problems = [p for v in viewers for p in v.problems(pub.last_seqs[v.sid])]
    assert not problems, problems[:5]


async def probe_draining(direct: httpx.AsyncClient, sid: str) -> list[str]:
    """Readiness and a new stream, asked of one replica directly, until it refuses."""
    out: list[str] = []

    def result(kind: str, resp: httpx.Response) -> str:
        body = resp.json() if resp.status_code != 200 else {}
        retry = resp.headers.get("retry-after")
        return f"{kind} {resp.status_code} {body.get('code', '')}" + (
            f" Retry-After {retry}" if retry else ""
        )

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            out.append(result("readyz", await direct.get("/readyz")).rstrip())
            async with direct.stream("GET", f"/v1/sessions/{sid}/events?from=live") as resp:
                if resp.status_code != 200:
                    await resp.aread()
                out.append(result("stream", resp).rstrip())
        except httpx.HTTPError as exc:
            out.append(type(exc).__name__)
            if isinstance(exc, httpx.ConnectError):
                break
        await asyncio.sleep(0.01)
    return out


async def test_rolling_restart_of_all_replicas(cluster: Cluster) -> None:
    """Restart the three replicas one after the other (SIGTERM, exit, start on the same
    port, ready, next) while 200 viewers watch 20 sessions that a publisher keeps feeding
    (ROLLING_RATE events/s in all): every viewer gets its session's whole log, in order,
    exactly once."""
    sessions = session_ids(20)
    steps = []
    async with publishing(cluster, sessions, rate=ROLLING_RATE) as pub:
        viewers, tasks = await start_viewers(cluster.lb.url, sessions, per_session=10)
        try:
            await asyncio.sleep(2)
            t0 = time.monotonic()
            for r in cluster.replicas:
                serving = upstream_counts(viewers)[r.addr]
                exit_s, code = await r.drain(DRAIN_TIMEOUT + EXIT_MARGIN)
                ready_s = await r.start_again()
                steps.append((r.addr, serving, exit_s, code, ready_s))
            restart_s = time.monotonic() - t0
            await asyncio.sleep(2)
            await pub.stop()
            caught_up_s = await wait_caught_up(viewers, pub.last_seqs, timeout=30)
        finally:
            await stop_viewers(tasks)
    await log_matches(cluster.store, pub.offsets)

    attempts = [a for v in viewers for a in v.attempts]
    reopen = [
        b.t_open - a.t_end
        for v in viewers
        for a, b in itertools.pairwise(v.attempts)
        if b.status == 200
    ]
    silence = [max(b - a for a, b in itertools.pairwise(v.times)) for v in viewers]
    print(
        f"\nRolling restart: {len(viewers)} viewers of {len(sessions)} sessions, 3 replicas "
        f"behind nginx\n"
        + "".join(
            f"  {addr}: drained {serving} viewers, exited in {exit_s:.2f} s (code {code}), "
            f"ready again {ready_s:.2f} s later\n"
            for addr, serving, exit_s, code, ready_s in steps
        )
        + f"  restart duration {restart_s:.1f} s; published {pub.published} events "
        f"({pub.actual_rate:.0f}/s over {pub.seconds:.1f} s, worst tick lag "
        f"{pub.max_late * 1000:.0f} ms)\n"
        f"  deliveries {sum(len(v.seqs) for v in viewers)} "
        f"(expected {sum(pub.last_seqs[v.sid] - v.start_seq for v in viewers)}), "
        f"gaps {sum(v.gaps for v in viewers)}, duplicates {sum(v.dups for v in viewers)}, "
        f"reconnects {sum(v.reconnects for v in viewers)}\n"
        f"  stream ends: {ends([a.end for a in attempts if a.end])}\n"
        f"  stream request statuses through nginx: {dict(Counter(a.status for a in attempts))}\n"
        f"  close to next stream open: {quantiles(reopen)}\n"
        f"  longest silence per viewer: {quantiles(silence)}; all caught up "
        f"{caught_up_s:.2f} s after the last publish\n"
        f"  now serving: {dict(upstream_counts(viewers))}"
    )
    assert all(code == -15 for *_, code, _ in steps)
    assert sum(v.reconnects for v in viewers) >= sum(s[1] for s in steps)
    # Every stream that ended was told to reconnect (none was cut), and nginx passed every
    # refused connection or 503 of a restarting replica on to another one.
    assert {a.end for a in attempts if a.end} == {"close:draining+eof"}
    assert {a.status for a in attempts} == {200}
    problems = [p for v in viewers for p in v.problems(pub.last_seqs[v.sid])]
    assert not problems, problems[:5]


async def test_fresh_replica_shares_one_pubsub_connection() -> None:
    """A replica that just started gets a wave of reconnects at once (every restart does):
    the first streams of 20 sessions arriving together share the process's one Pub/Sub
    connection, and every viewer gets live events (regression: concurrent first subscribes
    each took a pooled connection and orphaned all but the last, with their channels)."""
    with contextlib.ExitStack() as stack:
        redis = RedisServer()
        stack.callback(redis.stop)
        gw = Replica(redis.url)
        stack.callback(gw.stop)
        await gw.ready()
        sessions = session_ids(20)
        pub = PublisherProcess(redis.url, sessions, rate=100)
        stack.callback(pub.kill)
        viewers, tasks = await start_viewers(gw.url, sessions, per_session=1, together=True)
        try:
            await asyncio.sleep(2)
            mine = [
                line
                for line in redis.cli("CLIENT", "LIST").splitlines()
                if line.split("name=")[1].split()[0].endswith(f":{gw.proc.pid}")
            ]
            await pub.stop()
            # Well within one 15 s heartbeat: no viewer waits for the tail check.
            await wait_caught_up(viewers, pub.last_seqs, timeout=5)
        finally:
            await stop_viewers(tasks)
    pubsub = [line for line in mine if " sub=0 " not in line]
    print(
        f"\nfresh replica, 20 first streams at once: {len(mine)} Redis connections, "
        f"{len(pubsub)} in Pub/Sub mode; events per viewer {sorted(len(v.seqs) for v in viewers)}"
    )
    assert len(pubsub) == 1, pubsub
    problems = [p for v in viewers for p in v.problems(pub.last_seqs[v.sid])]
    assert not problems, problems[:5]


async def test_hub_concurrent_first_subscribes_share_one_pubsub_connection() -> None:
    """The deterministic form of the race above, on the hub of a fresh process: 20 first
    subscribes at once (cold connection pool) are all confirmed, quickly, on one Pub/Sub
    connection."""
    with contextlib.ExitStack() as stack:
        redis = RedisServer()
        stack.callback(redis.stop)
        client = connect(Settings(redis_url=redis.url), role="hub-race")
        hub = Hub(client, Metrics())
        await hub.start()
        try:
            t0 = time.monotonic()
            # Before the fix this took 30 s: six subscribes took the whole pool (one channel
            # each), the other 14 waited out the pool timeout and failed.
            async with asyncio.timeout(10):
                await asyncio.gather(
                    *(hub.subscribe(f"race-{i}", Subscriber(8)) for i in range(20))
                )
            took = time.monotonic() - t0
            confirmed = [hub.confirmed(f"race-{i}") for i in range(20)]
            lines = [
                line
                for line in redis.cli("CLIENT", "LIST").splitlines()
                if "name=hub-race:" in line and " sub=0 " not in line
            ]
        finally:
            await hub.stop()
            await client.aclose()
    subs = sorted(int(line.split(" sub=")[1].split()[0]) for line in lines)
    print(f"\nhub, 20 first subscribes at once: {took:.2f} s, channels per Pub/Sub conn {subs}")
    assert subs == [20]
    assert all(confirmed)  # Redis confirmed every channel
