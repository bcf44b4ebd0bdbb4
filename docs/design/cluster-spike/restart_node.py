"""restart a killed node (same port/dir/nodes.conf -> rejoins as replica); updates state.json"""
import json, sys, time
from cluster_harness import Cluster
st = json.load(open(sys.argv[1])); port = int(sys.argv[2])
c = Cluster(ports=st["ports"], dir=st["dir"], pids={int(p): v for p, v in st["pids"].items()})
t = time.monotonic()
c.start_node(port)
st["pids"][str(port)] = c.pids[port]
json.dump(st, open(sys.argv[1], "w"))
c.wait_ok()
while "master_link_status:up" not in c.cli(port, "INFO", "replication"):
    time.sleep(0.05)
print(f"restarted {port} pid {c.pids[port]} in {time.monotonic()-t:.2f}s; roles {c.roles()}")
