"""Q4: connection growth under concurrency, and the two ways of bounding it."""
import asyncio
import json
import random
import sys
import time

from redis.asyncio import Redis
from redis.exceptions import MaxConnectionsError

import bounded_cluster
from cluster_client import cluster_from_url

ST = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "state.json"))
PORTS = ST["ports"]
URL = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in PORTS[:3])
LUA = "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100, '*', 'v', ARGV[1]) redis.call('SPUBLISH', KEYS[2], id) return id"
TASKS, CALLS = 500, 20


def k(sid):
    return [f"gw:{{{sid}}}:log", f"gw:{{{sid}}}:notify"]


async def server_count(name):
    n = {}
    for p in PORTS:
        r = Redis(port=p, decode_responses=True)
        n[p] = sum(1 for c in await r.client_list() if c.get("name") == name)
        await r.aclose()
    return {p: v for p, v in n.items() if v}


async def workload(rc, name, gate=None):
    script = rc.register_script(LUA)
    await script(keys=k("warm"), args=["0"])
    errs = []

    async def one_task(t):
        for i in range(CALLS):
            sid = f"b{random.randrange(3000)}"
            try:
                if gate:
                    async with gate:
                        await script(keys=k(sid), args=[i])
                else:
                    await script(keys=k(sid), args=[i])
            except Exception as e:
                errs.append(type(e).__name__)
            if i % 5 == 4:  # cross-slot read pipeline
                async def pipe_read():
                    async with rc.pipeline(transaction=False) as p:
                        for j in range(10):
                            p.xrange(k(f"b{random.randrange(3000)}")[0], count=1)
                        return await p.execute()
                try:
                    if gate:
                        async with gate:
                            await pipe_read()
                    else:
                        await pipe_read()
                except Exception as e:
                    errs.append(type(e).__name__)
    t = time.perf_counter()
    await asyncio.gather(*(one_task(t) for t in range(TASKS)))
    dt = time.perf_counter() - t
    ops = TASKS * CALLS
    sc = await server_count(name)
    print(f"  {name:28s} {ops} script calls + {TASKS*CALLS//5} pipelines in {dt:.2f}s ({ops/dt:,.0f} calls/s); "
          f"errors={len(errs)} {set(errs) or ''}; server-side conns={sc} total={sum(sc.values())}")


async def main():
    print(f"== {TASKS} concurrent tasks x {CALLS} EVALSHA (+ cross-slot pipelines)")
    rc = cluster_from_url(URL, client_name="default-unbounded")
    await workload(rc, "default-unbounded"); await rc.aclose()

    rc = cluster_from_url(URL, client_name="maxconn2-nogate", max_connections=2)
    await workload(rc, "maxconn2-nogate"); await rc.aclose()

    rc = cluster_from_url(URL, client_name="A-global-sem1", max_connections=1)
    await workload(rc, "A-global-sem1", gate=asyncio.Semaphore(1)); await rc.aclose()

    rc = cluster_from_url(URL, client_name="A-global-sem2", max_connections=2)
    await workload(rc, "A-global-sem2", gate=asyncio.Semaphore(2)); await rc.aclose()

    bounded_cluster.install_bounded_nodes()
    rc = cluster_from_url(URL, client_name="B-pernode-max1", max_connections=1)
    await workload(rc, "B-pernode-max1"); await rc.aclose()
    rc = cluster_from_url(URL, client_name="B-pernode-max2", max_connections=2)
    await workload(rc, "B-pernode-max2"); await rc.aclose()

    # B + a blocking XREADGROUP on the same client: other commands to that node wait (no error)
    rc = cluster_from_url(URL, client_name="B-block", max_connections=1)
    lk = k("blk")[0]
    await rc.delete(lk); await rc.xgroup_create(lk, "g", id="$", mkstream=True)
    blocker = asyncio.create_task(rc.xreadgroup("g", "c", {lk: ">"}, block=1500))
    await asyncio.sleep(0.1)
    t = time.perf_counter()
    await rc.hgetall(f"gw:{{blk}}:meta")
    print(f"  B max_connections=1: HGETALL on the node of a pending XREADGROUP BLOCK 1500 waited {time.perf_counter()-t:.2f}s")
    await blocker; await rc.aclose()


asyncio.run(main())
