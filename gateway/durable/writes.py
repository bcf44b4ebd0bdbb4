"""Durable Streams writes: ``PUT`` (create, fork), ``POST`` (append, close), ``DELETE``.

Owns turning a validated request into the arguments of the store's scripts
(``gateway.store.durable``: ``ds_create``, ``ds_ref``/``ds_unref``, ``ds_append``,
``ds_delete``) and their replies into responses: idempotent creation, forks (the fork
point, the inherited ancestry, a sub-offset's prefix, the source reference dropped again
if the creation fails), JSON-mode bodies, the live payload an append publishes, producer
and ``Stream-Seq`` outcomes, and soft deletion.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from gateway.core.errors import GatewayError
from gateway.durable.exchange import Context, Exchange, authorize
from gateway.durable.protocol import (
    DEFAULT_CONTENT_TYPE,
    CreateRequest,
    Producer,
    is_json,
    is_text,
    json_join,
    json_messages,
    missing_error,
    normalize_type,
    parse_append,
    parse_create,
    parse_expires_at,
    parse_offset,
)
from gateway.store.durable import DS_ZERO_OFFSET, DsAppendResult, DsMessage, DsMeta, ds_offset


# --- PUT: create ----------------------------------------------------------------------------------
def _create_args(
    req: CreateRequest,
    *,
    mode: str,
    content_type: str,
    compare_type: str,
    ttl: int | None,
    expires_ms: int | None,
    expires_at: str | None,
    base: tuple[int, int] = (0, 0),
    fork_offset: str = DS_ZERO_OFFSET,
    ancestry: str = "",
    prefix: bytes = b"",
    initial: bytes = b"",
) -> list[str | bytes]:
    """The arguments of ``ds_create.lua`` (in its order)."""
    return [
        mode,
        secrets.token_hex(6),
        content_type,
        compare_type,
        "" if req.ttl is None else str(req.ttl),
        req.expires_at or "",
        "" if ttl is None else str(ttl),
        "" if expires_ms is None else str(expires_ms),
        expires_at or "",
        "1" if req.closed else "0",
        req.fork_from or "",
        req.fork_offset or "",
        str(req.sub_offset),
        str(base[0]),
        str(base[1]),
        fork_offset,
        ancestry,
        prefix,
        initial,
    ]


async def create_stream(ctx: Context, ex: Exchange, path: str) -> None:
    """``PUT``: create the stream (201 with ``Location``), or 200 when it exists with the
    same configuration; with ``Stream-Forked-From``, a fork. The body is the first message.

    Raises:
        GatewayError: 400 for bad headers or a bad JSON-mode body, 409 ``stream_exists``
            (another configuration) or ``stream_gone`` (soft-deleted), 413 ``too_large``,
            and the fork errors (see :func:`_fork`).
    """
    req = parse_create(ex.headers)
    body = await ex.body(ctx.cfg.max_append_bytes)
    if req.fork_from is not None:
        await _fork(ctx, ex, path, req, body)
        return
    content_type = req.content_type or DEFAULT_CONTENT_TYPE
    nct = normalize_type(content_type)
    initial = (json_messages(body, create=True) or b"") if is_json(nct) and body else body
    status, n, b, closed, ct = await ctx.ds.create(
        path,
        _create_args(
            req,
            mode="create",
            content_type=content_type,
            compare_type=nct,
            ttl=req.ttl,
            expires_ms=req.expires_ms,
            expires_at=req.expires_at,
            initial=initial,
        ),
    )
    await _created(ex, path, status, n, b, closed, ct)


async def _created(
    ex: Exchange, path: str, status: str, n: int, b: int, closed: bool, content_type: str
) -> None:
    if status == "gone":
        raise GatewayError(409, "stream_gone", f"{path!r} was deleted but forks still read it")
    if status == "conflict":
        raise GatewayError(409, "stream_exists", f"{path!r} exists with another configuration")
    headers = {"content-type": content_type, "stream-next-offset": ds_offset(n, b)}
    if closed:
        headers["stream-closed"] = "true"
    if status == "created":
        headers["location"] = ex.location()
    await ex.respond(201 if status == "created" else 200, headers)


async def _fork(ctx: Context, ex: Exchange, path: str, req: CreateRequest, body: bytes) -> None:
    """Create ``path`` as a fork of ``req.fork_from`` (``view`` on it is required).

    Raises:
        GatewayError: 401 / 403, 404 ``source_not_found``, 409 ``source_gone`` or
            ``content_type_mismatch``, 400 ``invalid_fork_offset`` or ``invalid_sub_offset``.
    """
    source = req.fork_from
    assert source is not None
    authorize(ctx, ex, "view", source)
    nct = normalize_type(req.content_type) if req.content_type else ""
    probe = _create_args(
        req,
        mode="probe",
        content_type="",
        compare_type=nct,
        ttl=None,
        expires_ms=None,
        expires_at=None,
    )
    status, n, b, closed, ct = await ctx.ds.create(path, probe)
    if status != "absent":
        await _created(ex, path, status, n, b, closed, ct)
        return
    fork_n, fork_b = parse_offset(req.fork_offset) if req.fork_offset else (None, 0)
    if fork_n is not None and fork_n >= 10**18:
        raise GatewayError(400, "invalid_fork_offset", "Stream-Fork-Offset is beyond the source")
    status, src, n_at, b_at = await ctx.ds.ref(source, path, nct, fork_n, fork_b)
    if src is None:
        if status == "notfound":
            raise GatewayError(404, "source_not_found", f"no stream {source!r} to fork")
        if status == "gone":
            raise GatewayError(409, "source_gone", f"{source!r} was deleted (forks still read it)")
        if status == "ct_mismatch":
            raise GatewayError(409, "content_type_mismatch", f"{source!r} has another content type")
        raise GatewayError(400, "invalid_fork_offset", "Stream-Fork-Offset is beyond the source")
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await ctx.ds.release(source, path)

    try:
        # The chain of logs the fork reads below its base, then the base offset itself.
        ancestry = [[p, lo, min(hi, n_at)] for p, lo, hi in src.ancestry if lo < n_at]
        if n_at > src.fork_n:
            ancestry.append([source, src.fork_n, n_at])
        if b_at < 0:
            b_at = (await _message_at(ctx, ancestry, n_at)).b
        prefix = b""
        if req.sub_offset:
            prefix = await _sub_offset_prefix(ctx, source, src, n_at, req.sub_offset)
        content_type = req.content_type or src.content_type
        fork_nct = normalize_type(content_type)
        initial = body
        if is_json(fork_nct) and body:
            initial = json_messages(body, create=True) or b""
        ttl, expires_ms, expires_at = req.ttl, req.expires_ms, req.expires_at
        if ttl is None and expires_ms is None:  # inherit the source's expiry
            ttl = src.ttl
            if ttl is None and src.expires_at:
                expires_at, expires_ms = src.expires_at, parse_expires_at(src.expires_at)
        args = _create_args(
            req,
            mode="create",
            content_type=content_type,
            compare_type=fork_nct,
            ttl=ttl,
            expires_ms=expires_ms,
            expires_at=expires_at,
            base=(n_at, b_at),
            fork_offset=ds_offset(n_at, b_at),
            ancestry=json.dumps(ancestry, separators=(",", ":")),
            prefix=prefix,
            initial=initial,
        )
        status, n, b, closed, ct = await ctx.ds.create(path, args)
        if status != "created":
            await release()  # lost a race with another PUT of the same path
        await _created(ex, path, status, n, b, closed, ct)
    except BaseException:
        await release()
        raise


async def _message_at(ctx: Context, ancestry: list[list[Any]], n: int) -> DsMessage:
    for p, lo, hi in ancestry:
        if lo < n <= hi:
            got = await ctx.ds.range(p, n - 1, n, 1, 1)
            if got:
                return got[0]
    raise GatewayError(400, "invalid_fork_offset", "no message at Stream-Fork-Offset")


async def _sub_offset_prefix(
    ctx: Context, source: str, src: DsMeta, n_at: int, sub_offset: int
) -> bytes:
    """The first ``sub_offset`` bytes (JSON: values) of the source message after the fork
    point, materialized as the fork's first own message."""
    if n_at >= src.n:
        raise GatewayError(400, "invalid_sub_offset", "no message after the fork point")
    if n_at >= src.fork_n:
        got = await ctx.ds.range(source, n_at, n_at + 1, 1, 1)
        if not got:
            raise GatewayError(400, "invalid_sub_offset", "no message after the fork point")
        message = got[0]
    else:
        chain = [[p, lo, min(hi, src.fork_n)] for p, lo, hi in src.ancestry]
        message = await _message_at(ctx, chain, n_at + 1)
    if is_json(src.normalized_type):
        values = json.loads(b"[" + message.data + b"]")
        if sub_offset > len(values):
            raise GatewayError(400, "invalid_sub_offset", "Stream-Fork-Sub-Offset overshoots")
        return json_join(values[:sub_offset])
    if sub_offset > len(message.data):
        raise GatewayError(400, "invalid_sub_offset", "Stream-Fork-Sub-Offset overshoots")
    return message.data[:sub_offset]


# --- POST: append and close -----------------------------------------------------------------------
async def append_stream(ctx: Context, ex: Exchange, path: str) -> None:
    """``POST``: append the body as one message (204, or 200 with producer headers), and
    close the stream with ``Stream-Closed: true`` (an empty body then only closes).

    The checks that need the stream's state (closed, content type, producer, ``Stream-Seq``,
    a JSON-mode body) run atomically in ``ds_append.lua``; a body that is not valid JSON is
    reported through it (``deferred``) so that a closed stream still answers 409 first.

    Raises:
        GatewayError: 400 (headers, empty body, no Content-Type, JSON), 403 ``stale_epoch``,
            404 / 410, 409 ``stream_closed``, ``content_type_mismatch``, ``sequence_gap``
            or ``sequence_conflict``, 413 ``too_large``.
    """
    req = parse_append(ex.headers)
    body = await ex.body(ctx.cfg.max_append_bytes)
    deferred = ""
    data = body
    request_type = ""
    live_kind, live_b64 = "-", ""
    if not body:
        if not req.close:
            raise GatewayError(400, "empty_body", "an append needs a body (or Stream-Closed: true)")
        op = "close"
    else:
        op = "append"
        given = ex.headers.get("content-type")
        if not given or not given.strip():
            raise GatewayError(400, "content_type_required", "an append needs a Content-Type")
        request_type = normalize_type(given)
        if is_json(request_type):
            try:
                data = json_messages(body, create=False) or b""
            except GatewayError as exc:
                deferred, data = exc.code, b""
        if deferred == "" and len(data) <= ctx.cfg.live_payload_max:
            if is_text(request_type):
                try:
                    data.decode("utf-8")
                    live_kind = "t"
                except UnicodeDecodeError:
                    live_kind, live_b64 = "b", base64.b64encode(data).decode()
            else:
                live_kind, live_b64 = "b", base64.b64encode(data).decode()
    producer = req.producer
    res = await ctx.ds.append(
        path,
        [
            op,
            data,
            request_type,
            "1" if req.close else "0",
            req.stream_seq,
            producer.id if producer else "",
            producer.epoch if producer else "0",
            producer.seq if producer else "0",
            deferred,
            live_kind,
            live_b64,
        ],
    )
    await _appended(ctx, ex, path, res, op, producer)


async def _appended(
    ctx: Context,
    ex: Exchange,
    path: str,
    res: DsAppendResult,
    op: str,
    producer: Producer | None,
) -> None:
    status = res.status
    tail = {"stream-next-offset": res.tail}
    if status in ("notfound", "gone"):
        raise await ctx.missing(status, path)
    if status == "ok":
        headers = dict(tail)
        if res.closed:
            headers["stream-closed"] = "true"
        if producer is not None:
            headers["producer-epoch"] = producer.epoch
            headers["producer-seq"] = producer.seq
        await ex.respond(200 if producer is not None and op == "append" else 204, headers)
        return
    if status in ("dup", "dup_closed"):
        assert producer is not None
        headers = {**tail, "producer-epoch": producer.epoch, "producer-seq": str(res.y)}
        if res.closed:
            headers["stream-closed"] = "true"
        await ex.respond(204, headers)
        return
    if status == "closed":
        raise GatewayError(
            409, "stream_closed", "the stream is closed", {**tail, "stream-closed": "true"}
        )
    if status == "ct_mismatch":
        raise GatewayError(409, "content_type_mismatch", "Content-Type differs from the stream's")
    if status == "stale_epoch":
        raise GatewayError(
            403, "stale_epoch", "a newer producer epoch took over", {"producer-epoch": str(res.x)}
        )
    if status == "bad_epoch_seq":
        raise GatewayError(
            400, "invalid_epoch_seq", "a new producer epoch starts at Producer-Seq 0"
        )
    if status == "seq_gap":
        raise GatewayError(
            409,
            "sequence_gap",
            f"expected Producer-Seq {res.x}",
            {"producer-expected-seq": str(res.x), "producer-received-seq": str(res.y)},
        )
    if status == "seq_conflict":
        raise GatewayError(409, "sequence_conflict", "Stream-Seq must grow (byte-wise order)")
    if status == "invalid_json":
        raise GatewayError(400, "invalid_json", "the body is not JSON")
    if status == "empty_array":
        raise GatewayError(400, "empty_array", "an empty JSON array appends nothing")
    raise GatewayError(500, "internal_error", f"unexpected append status {status!r}")


# --- DELETE ---------------------------------------------------------------------------------------
async def delete_stream(ctx: Context, ex: Exchange, path: str) -> None:
    """``DELETE``: 204; a stream that forks still read is soft-deleted (410 from then on),
    and the last fork's deletion deletes its sources for good (``ds_unref`` up the chain).

    Raises:
        GatewayError: 404 ``stream_not_found`` / 410 ``stream_gone``.
    """
    await ctx.ds.collect(path)  # forks that expired no longer hold it
    status = await ctx.ds.delete(path)
    if status in ("notfound", "gone"):
        raise missing_error(status, path)
    await ex.respond(204, {})
