"""EVALSHA with an EVAL fallback routed to the SAME node (by key).

Why not Script/register_script's own NOSCRIPT handling? AsyncScript reloads with
SCRIPT LOAD, which the cluster client sends to the nodes it *believes* are primaries.
In redis-py 6.4, two or more concurrent commands that get MOVED after a failover can
corrupt the client's slot cache so the new master is flagged 'replica'
(see q2c_moved_race.py: view [('127.0.0.1:17521','replica'),('127.0.0.1:17521','replica')]);
SCRIPT LOAD then never reaches it and every call on that shard fails with
'NoScriptError: No matching script. Please use EVAL.' until the client happens to
re-initialise (every 5th MOVED, or on a ConnectionError). EVAL is routed exactly like
EVALSHA (by the first key), and it also caches the script on that node.
"""
import hashlib

from redis.exceptions import NoScriptError


class ClusterScript:
    def __init__(self, rc, source: str):
        self.rc = rc
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys, args=()):
        try:
            return await self.rc.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.rc.eval(self.source, len(keys), *keys, *args)

    def queue(self, pipe, keys, args=()):
        """For a cluster pipeline (Script(client=pipe) is blocked there): raw EVALSHA;
        on NoScriptError results, re-run those entries with __call__."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
