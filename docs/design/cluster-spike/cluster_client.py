"""Build a redis.asyncio RedisCluster from a multi-host URL.

    redis+cluster://[user[:password]@]host1:port1,host2:port2[,[::1]:7002][/0][?opt=val&...]
    rediss+cluster://...   -> TLS

redis-py 6.4's RedisCluster.from_url() accepts only ONE host
(`redis+cluster://...` -> "ValueError: Redis URL must specify one of the following
schemes (redis://, rediss://, unix://)"; `redis://h:p,h:p` -> "ValueError: Port could
not be cast to integer value as '17520,127.0.0.1:17521'"), so we parse the netloc
ourselves and pass startup_nodes.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.asyncio.retry import Retry

SCHEMES = {"redis+cluster": False, "rediss+cluster": True,
           "redis": False, "rediss": True}  # plain redis:// with 1..n hosts also accepted

# query-string options we understand (all optional)
_INT_OPTS = {"max_connections", "reinitialize_steps"}
_FLOAT_OPTS = {"socket_timeout", "socket_connect_timeout"}
_BOOL_OPTS = {"read_from_replicas", "require_full_coverage", "ssl_check_hostname"}


def _split_hostport(item: str, default_port: int = 6379) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    host, sep, port = item.rpartition(":")
    if not sep:
        return item, default_port
    return host, int(port)


def parse_cluster_url(url: str) -> dict:
    """-> {"startup_nodes": [(host, port), ...], "ssl": bool, "username", "password", **opts}"""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {url!r}")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    nodes = [_split_hostport(h) for h in netloc.split(",") if h.strip()]
    if not nodes:
        raise ValueError(f"no host in {url!r}")
    db = parts.path.lstrip("/")
    if db not in ("", "0"):
        raise ValueError("Redis Cluster only supports db 0")
    out: dict = {"startup_nodes": nodes, "ssl": SCHEMES[parts.scheme],
                 "username": username, "password": password}
    for k, v in parse_qsl(parts.query):
        if k in _INT_OPTS:
            out[k] = int(v)
        elif k in _FLOAT_OPTS:
            out[k] = float(v)
        elif k in _BOOL_OPTS:
            out[k] = v.lower() in ("1", "true", "yes", "on")
        else:
            raise ValueError(f"unknown option {k!r}")
    return out


def cluster_from_url(url: str, **overrides) -> RedisCluster:
    cfg = parse_cluster_url(url)
    cfg.update(overrides)
    nodes = [ClusterNode(h, p) for h, p in cfg.pop("startup_nodes")]
    if not cfg.get("ssl"):
        cfg.pop("ssl", None)
    cfg.setdefault("decode_responses", True)
    # Retries at cluster-client level (redis-py 6.x only uses retry.get_retries()).
    cfg.setdefault("retry", Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=6))
    cfg.setdefault("socket_connect_timeout", 2.0)
    return RedisCluster(startup_nodes=nodes, **{k: v for k, v in cfg.items() if v is not None})


if __name__ == "__main__":
    for u in ["redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
              "rediss+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001/0?max_connections=4&read_from_replicas=1",
              "redis+cluster://h1,h2:7002"]:
        print(u, "->", parse_cluster_url(u))
