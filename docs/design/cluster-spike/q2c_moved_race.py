"""Q2c: redis-py 6.4 asyncio cluster - concurrent MOVED after a failover can mark the NEW
primary as REPLICA in the client's cache; SCRIPT LOAD (sent to 'primaries') then never
reaches it and EVALSHA fails with NoScriptError until a full re-initialise."""
import asyncio, json, sys, random
from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from cluster_client import cluster_from_url
from cluster_harness import Cluster
ST = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "state.json"))
CONC = int(sys.argv[2]) if len(sys.argv) > 2 else 20
c = Cluster(ports=ST["ports"], dir=ST["dir"], pids={int(p): v for p, v in ST["pids"].items()})

async def main():
    rc = cluster_from_url("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ST["ports"]))
    await rc.initialize()
    key = "gw:{race}:meta"
    slot = rc.keyslot(key)
    owner = rc.get_node_from_key(key).port
    rep = c.replica_of(owner)
    c.cli(rep, "CLUSTER", "FAILOVER")
    while c.cli(rep, "ROLE").split()[0] != "master":
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # CONC concurrent commands that all get MOVED from the demoted master
    res = await asyncio.gather(*(rc.hget(key, "x") for _ in range(CONC)), return_exceptions=True)
    print(f"{CONC} concurrent HGETs after failover -> errors: {[type(r).__name__ for r in res if isinstance(r, Exception)]}")
    print(f"client view of slot {slot}: {[(n.name, n.server_type) for n in rc.nodes_manager.slots_cache[slot]]}")
    print("client primaries:", sorted(n.name for n in rc.get_primaries()), " real new master:", rep)
    s = rc.register_script(f"return redis.call('HINCRBY', KEYS[1], 'n', {random.randint(1, 10**9)})")  # fresh sha
    for i in range(3):
        try:
            print(f"  script call {i}:", await s(keys=[key]))
        except NoScriptError as e:
            print(f"  script call {i}: NoScriptError: {e}")
    from cluster_script import ClusterScript
    cs = ClusterScript(rc, f"return redis.call('HINCRBY', KEYS[1], 'n', {random.randint(1, 10**9)})")
    for i in range(2):
        print(f"  ClusterScript (EVALSHA->EVAL fallback) call {i}:", await cs(keys=[key]))
    for p in ST["ports"]:
        r = Redis(port=p); print(f"   {p} role={(await r.execute_command('ROLE'))[0]} has script={await r.script_exists(s.sha)}"); await r.aclose()
    print("client view after script calls:", [(n.name, n.server_type) for n in rc.nodes_manager.slots_cache[slot]], "reinit counter", rc.reinitialize_counter)
    await rc.aclose()
asyncio.run(main())
