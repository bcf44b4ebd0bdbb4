"""Q6: failover while SPUBLISH(Lua)+XADD traffic is flowing.

usage: python q6_failover.py state.json manual|kill [--app-retry] [--retries N]
  manual: redis-cli -p <replica> CLUSTER FAILOVER   (graceful, no data loss expected)
  kill  : SIGKILL the master; replica takes over after cluster-node-timeout (2000 ms)
"""
import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import RedisError

from cluster_client import cluster_from_url
from cluster_harness import Cluster
from sharded_pubsub import ShardedPubSub

ap = argparse.ArgumentParser()
ap.add_argument("state")
ap.add_argument("mode", choices=["manual", "kill", "kill-replica"])
ap.add_argument("--app-retry", action="store_true", help="wrap calls in an app-level retry with backoff")
ap.add_argument("--retries", type=int, default=3, help="RedisCluster retry count (default 3 = redis-py default)")
ap.add_argument("--replica-sub", action="store_true", help="SSUBSCRIBE on replicas instead of masters")
ap.add_argument("--bounded", action="store_true", help="BoundedClusterNode + max_connections=1")
ap.add_argument("--cluster-script", action="store_true", help="EVALSHA->EVAL fallback instead of register_script")
ap.add_argument("--duration", type=float, default=14.0)
args = ap.parse_args()

logging.basicConfig(level=logging.WARNING, format="%(asctime)s.%(msecs)03d %(name)s %(message)s", datefmt="%H:%M:%S")
ST = json.load(open(args.state))
PORTS = ST["ports"]
URL = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in PORTS[:3])
T0 = time.monotonic()


def ts():
    return f"{time.monotonic() - T0:6.2f}s"


APPEND_LUA = """
local id = redis.call('XADD', KEYS[1], '*', 'seq', ARGV[1])
redis.call('SPUBLISH', KEYS[2], ARGV[1])
return id
"""


def k(sid):
    return [f"gw:{{{sid}}}:log", f"gw:{{{sid}}}:notify"]


async def with_app_retry(fn, *, attempts=40, delay=0.1):
    """App-level retry: redis-py's own retries do not sleep between attempts on ConnectionError."""
    for i in range(attempts):
        try:
            return await fn()
        except RedisError as e:
            if i == attempts - 1:
                raise
            await asyncio.sleep(delay)


async def main():
    if args.bounded:
        import bounded_cluster
        bounded_cluster.install_bounded_nodes()
    rc = cluster_from_url(URL, client_name="q6", retry=Retry(ConstantBackoff(0), args.retries),
                          **({"max_connections": 1} if args.bounded else {}))
    await rc.initialize()
    if args.cluster_script:
        from cluster_script import ClusterScript
        append = ClusterScript(rc, APPEND_LUA)
    else:
        append = rc.register_script(APPEND_LUA)
    cluster = Cluster(ports=PORTS, dir=ST["dir"], pids={int(p): v for p, v in ST["pids"].items()})
    masters = cluster.masters()
    victim = masters[0]
    replica = cluster.replica_of(victim)
    if args.mode == "kill-replica":  # kill the replica (the master keeps serving)
        victim, replica = replica, victim
    # sessions: pick 12 per master so each shard is exercised
    sids, per = [], collections.Counter()
    i = 0
    while len(sids) < 36:
        sid = f"fo{i}"; i += 1
        port = rc.get_node_from_key(k(sid)[0]).port
        if per[port] < 12:
            per[port] += 1; sids.append(sid)
    shard_master = replica if args.mode == "kill-replica" else victim
    on_victim = {s for s in sids if rc.get_node_from_key(k(s)[0]).port == shard_master}
    print(f"{ts()} masters={masters} victim={victim} its replica={replica}; {len(on_victim)} sessions on victim")
    for s in sids:
        await rc.delete(k(s)[0])
    ps = ShardedPubSub(rc, health_interval=1.0, use_replicas=args.replica_sub)
    await ps.ssubscribe(*[k(s)[1] for s in sids])

    sent_ok = collections.defaultdict(list)        # sid -> seqs acknowledged
    errors = []                                    # (t, sid, exc type, msg)
    received = collections.defaultdict(list)
    events = []
    stop = asyncio.Event()

    async def producer():
        seq = 0
        while not stop.is_set():
            for s in sids:
                seq += 1
                try:
                    if args.app_retry:
                        await with_app_retry(lambda: append(keys=k(s), args=[seq]))
                    else:
                        await append(keys=k(s), args=[seq])
                    sent_ok[s].append(seq)
                except Exception as e:
                    errors.append((time.monotonic() - T0, s in on_victim, type(e).__name__, str(e)[:110]))
                    if type(e).__name__ == "NoScriptError" and not getattr(producer, "dumped", False):
                        producer.dumped = True
                        slot = rc.keyslot(k(s)[0])
                        print(f"{ts()} DEBUG NoScriptError for slot {slot}: slots_cache={[ (n.name, n.server_type) for n in rc.nodes_manager.slots_cache[slot]]}"
                              f" primaries={[n.name for n in rc.get_primaries()]} script.sha={append.sha}")
                        for p in PORTS:
                            try:
                                r = Redis(port=p); ex = await r.script_exists(append.sha); role = (await r.execute_command("ROLE"))[0]; await r.aclose()
                                print(f"   {p} role={role} SCRIPT EXISTS={ex}")
                            except Exception as ee:
                                print(f"   {p} {ee!r}")
            await asyncio.sleep(0.02)

    async def consumer():
        while not stop.is_set():
            m = await ps.get_message(timeout=0.2)
            if m is None:
                continue
            sid = m["channel"].split("{")[1].split("}")[0]
            if m["type"] == "smessage":
                received[sid].append(int(m["data"]))
            else:
                events.append((ts(), m["type"], m["channel"], m["node"]))

    reader_log = []

    brc = cluster_from_url(URL, client_name="q6-block", max_connections=1) if args.bounded else rc

    async def blocking_reader():  # XREADGROUP BLOCK on a stream of the victim shard
        rc = brc  # dedicated client (1 connection) when --bounded
        s = next(iter(on_victim))
        try:
            await rc.xgroup_create(k(s)[0], "g", id="$", mkstream=True)
        except Exception:
            pass
        while not stop.is_set():
            try:
                r = await rc.xreadgroup("g", "c", {k(s)[0]: ">"}, count=100, block=500)
                if r:
                    await rc.xack(k(s)[0], "g", *[e[0] for e in r[0][1]])
                    reader_log.append((time.monotonic() - T0, "ok", len(r[0][1])))
            except Exception as e:
                reader_log.append((time.monotonic() - T0, type(e).__name__, str(e)[:90]))
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(f()) for f in (producer, consumer, blocking_reader)]
    await asyncio.sleep(2.0)
    t_fail = time.monotonic() - T0
    if args.mode == "manual":
        out = cluster.cli(replica, "CLUSTER", "FAILOVER")
        print(f"{ts()} redis-cli -p {replica} CLUSTER FAILOVER -> {out.strip()}")
    else:  # kill / kill-replica
        os.kill(cluster.pids[victim], signal.SIGKILL)
        print(f"{ts()} SIGKILL master {victim} (pid {cluster.pids[victim]})")
    # watch roles
    t_promoted = None
    while args.mode != "kill-replica" and time.monotonic() - T0 < t_fail + 10:
        try:
            role = cluster.cli(replica, "ROLE").split("\n")[0]
        except Exception:
            role = "?"
        if role == "master":
            t_promoted = time.monotonic() - T0
            print(f"{ts()} {replica} is now master ({t_promoted - t_fail:.2f}s after trigger)")
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(max(0.0, args.duration - (time.monotonic() - T0)))
    stop.set()
    await asyncio.sleep(0.5)
    for t in tasks:
        t.cancel()
    # drain
    while (m := await ps.get_message(timeout=0.3)) is not None:
        if m["type"] == "smessage":
            received[m["channel"].split("{")[1].split("}")[0]].append(int(m["data"]))

    # ---- report
    print(f"\n== errors seen by the asyncio RedisCluster caller ({len(errors)}):")
    agg = collections.OrderedDict()
    for t, v, typ, msg in errors:
        key = (typ, msg, v)
        if key not in agg:
            agg[key] = [t, t, 0]
        agg[key][1] = t; agg[key][2] += 1
    for (typ, msg, v), (a, b, n) in agg.items():
        print(f"  {n:5d}x {a:6.2f}-{b:6.2f}s victim_shard={v} {typ}: {msg}")
    if errors:
        print(f"  error window: {errors[0][0]:.2f}s .. {errors[-1][0]:.2f}s (trigger at {t_fail:.2f}s)")
    print("== blocking XREADGROUP task:")
    errs = [x for x in reader_log if x[1] != "ok"]
    print(f"  ok reads={sum(1 for x in reader_log if x[1]=='ok')} errors={len(errs)}", errs[:6])
    print("== sharded subscriber:")
    print("  stats:", dict(ps.stats))
    print("  events:", events[:8], "..." if len(events) > 8 else "")
    lost_total = lost_victim = dup = 0
    for s in sids:
        got = collections.Counter(received[s])
        dup += sum(c - 1 for c in got.values() if c > 1)
        missing = [q for q in sent_ok[s] if q not in got]
        lost_total += len(missing)
        if s in on_victim:
            lost_victim += len(missing)
    n_ok = sum(len(v) for v in sent_ok.values())
    print(f"  acknowledged SPUBLISH={n_ok} received={sum(len(v) for v in received.values())} "
          f"lost={lost_total} (victim shard {lost_victim}) duplicates={dup}")
    # acknowledged-but-missing stream entries (write loss)
    lost_writes = 0
    for s in sids:
        entries = await with_app_retry(lambda: rc.xrange(k(s)[0]))
        have = {int(e[1]["seq"]) for e in entries}
        lost_writes += sum(1 for q in sent_ok[s] if q not in have)
    print(f"== acknowledged XADDs missing from the stream afterwards: {lost_writes}")
    print("== connections now: subscriber", ps.connection_count(), sorted(ps._nodes),
          "| cluster client", {n.name: len(n._connections) for n in rc.get_nodes() if n._connections})
    srv = {}
    for p in PORTS:
        try:
            r = Redis(port=p, decode_responses=True)
            cl = await r.client_list()
            srv[p] = (sum(1 for c in cl if c.get("name") == "q6"), sum(1 for c in cl if c.get("name") == "q6-ssub"))
            await r.aclose()
        except Exception:
            srv[p] = "down"
    print("== server-side (cmd, ssub) connections per node:", srv)
    from bounded_cluster import prune_non_primary
    print("== prune_non_primary closed", await prune_non_primary(rc), "idle connection(s) on non-primary nodes")
    srv = {}
    for p in PORTS:
        try:
            r = Redis(port=p, decode_responses=True)
            cl = await r.client_list()
            srv[p] = (sum(1 for c in cl if c.get("name") == "q6"), sum(1 for c in cl if c.get("name") == "q6-ssub"),
                      sum(1 for c in cl if c.get("name") == "q6-block"))
            await r.aclose()
        except Exception:
            srv[p] = "down"
    print("== after prune (cmd, ssub, block):", srv, "total", sum(sum(v) for v in srv.values() if v != "down"))
    print("roles:", cluster.roles())
    await ps.aclose()
    await rc.aclose()
    if brc is not rc:
        await brc.aclose()


asyncio.run(main())
