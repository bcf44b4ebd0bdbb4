"""HTTP API: the Litestar application. ``app`` (wiring, lifespan, signals), ``runtime`` (what
a process shares), ``deps`` (the guard and dependencies: runtime, principal, validated ids),
``schemas`` (declared request and response bodies), ``errors`` (rendering every error as
``{"code", "message"}``), ``auth`` (tokens), ``routes`` (handlers by resource)."""
