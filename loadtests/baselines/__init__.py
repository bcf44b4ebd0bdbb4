"""Alternatives the benchmark (``python -m loadtests.bench``) runs side by side with the gateway.

- ``xread_per_viewer``: the design most teams write first, one blocking ``XREAD`` per SSE
  viewer on its own Redis connection, resume by ``Last-Event-ID``.
- ``litestar_channels``: Litestar's ``ChannelsPlugin`` with ``RedisChannelsStreamBackend``,
  resume from the plugin's history.
- ``raw_asgi``: not an alternative but the ceiling: a minimal ASGI app under the same uvicorn
  that writes pre-built SSE frames (the server's own limit, and its idle memory floor).

Each is served by uvicorn with the gateway's defaults (uvloop, httptools) and started as
``python -m loadtests.baselines.<name> --port N`` with ``REDIS_URL`` in the environment.
"""
