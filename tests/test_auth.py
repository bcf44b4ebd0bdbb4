"""Access control, black box: a gateway started with a token key, real Redis, HTTP + SSE.

Who may read which session, what a leaked connection id is worth, publisher tokens, and the
key kinds (HS256 secret, RS256 PEM public key, ES256 JWKS file).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.api.auth import Authenticator, AuthError, mint
from gateway.settings import Settings
from tests.support import ROOT, Gateway, RedisServer, sse

SECRET = "s3cret-for-tests-" + "x" * 32


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Iterator[Gateway]:
    gw = Gateway(redis_server.url, jwt_secret=SECRET, heartbeat_interval=1.0)
    yield gw
    gw.stop()


def bearer(sub: str, sessions: list[str], actions: list[str], ttl: float = 600) -> dict[str, str]:
    token = mint(SECRET, sub, sessions=sessions, actions=actions, ttl_s=ttl)
    return {"Authorization": f"Bearer {token}"}


ALICE = bearer("alice", ["team-a-*"], ["view", "command", "approve"])
BOB = bearer("bob", ["*"], ["view"])
PUBLISHER = bearer("agent-1", ["*"], ["publish"])


async def test_no_token_is_401_and_operations_stay_open(secured, client):
    r = await client.get(f"{secured.url}/v1/sessions")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(secured.url + path)).status_code == 200


async def test_bad_and_expired_tokens_are_401_with_a_code(secured, client):
    url = f"{secured.url}/v1/sessions"
    forged = mint("another-secret-that-is-long-enough-000000", "alice", ttl_s=60)
    expired = jwt.encode(
        {"sub": "alice", "sessions": ["*"], "actions": ["view"], "exp": int(time.time()) - 5},
        SECRET,
        "HS256",
    )
    for token, code in (
        ("garbage", "invalid_token"),
        (forged, "invalid_token"),
        (expired, "token_expired"),
    ):
        r = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["code"] == code, r.text


async def test_sessions_outside_the_tokens_patterns_are_invisible(secured, client, sid):
    mine, theirs = f"team-a-{sid}", f"team-b-{sid}"
    for s in (mine, theirs):
        r = await client.post(
            f"{secured.url}/v1/sessions/{s}/events",
            headers=PUBLISHER,
            json={"type": "session.title", "data": {"title": s}},
        )
        assert r.status_code == 201, r.text
    listed = (await client.get(f"{secured.url}/v1/sessions", headers=ALICE)).json()["sessions"]
    ids = {x["session_id"] for x in listed}
    assert mine in ids and theirs not in ids
    r = await client.get(f"{secured.url}/v1/sessions/{theirs}", headers=ALICE)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await client.post(f"{secured.url}/v1/sessions/{theirs}/connections", headers=ALICE, json={})
    assert r.status_code == 403
    r = await client.get(f"{secured.url}/v1/sessions/{theirs}/events?from=start", headers=ALICE)
    assert r.status_code == 403
    # What each token may do: bob only views, alice may not publish.
    r = await client.post(
        f"{secured.url}/v1/sessions/{mine}/runs", headers=BOB, json={"input": "x"}
    )
    assert r.status_code == 403
    r = await client.post(
        f"{secured.url}/v1/sessions/{mine}/events",
        headers=ALICE,
        json={"type": "session.title", "data": {"title": "x"}},
    )
    assert r.status_code == 403


async def test_a_leaked_connection_id_reads_nothing(secured, client, sid):
    s = f"team-a-{sid}"
    await client.post(
        f"{secured.url}/v1/sessions/{s}/events",
        headers=PUBLISHER,
        json={"type": "session.title", "data": {"title": "private"}},
    )
    r = await client.post(
        f"{secured.url}/v1/sessions/{s}/connections", headers=ALICE, json={"from": "start"}
    )
    cid = r.json()["connection_id"]
    base = f"{secured.url}/v1/sessions/{s}/connections/{cid}"
    # Bob may view every session, but the connection is alice's: it does not exist for him.
    assert (await client.get(base, headers=BOB)).status_code == 404
    assert (await client.get(f"{base}/events", headers=BOB)).status_code == 404
    ack = await client.post(f"{base}/ack", headers=BOB, json={"offset": r.json()["offset"]})
    assert ack.status_code == 404
    assert (await client.delete(base, headers=BOB)).status_code == 404
    # Alice reads it, with the token in the query string as EventSource must send it.
    token = ALICE["Authorization"].split()[1]
    async with sse(client, f"{base}/events?access_token={token}") as stream:
        frame = await stream.next()
    assert frame.json()["data"] == {"title": "private"}


async def test_mux_and_activity_are_bound_to_the_token(secured, client, sid):
    mine, theirs = f"team-a-{sid}", f"team-b-{sid}"
    r = await client.post(f"{secured.url}/v1/mux", headers=ALICE)
    mux = r.json()["mux_id"]
    assert (await client.get(f"{secured.url}/v1/mux/{mux}", headers=BOB)).status_code == 404
    r = await client.put(f"{secured.url}/v1/mux/{mux}/sessions/{theirs}", headers=ALICE, json={})
    assert r.status_code == 403
    r = await client.put(f"{secured.url}/v1/mux/{mux}/sessions/{mine}", headers=ALICE, json={})
    assert r.status_code == 200, r.text
    async with sse(client, f"{secured.url}/v1/activity", headers=ALICE) as feed:
        for s in (theirs, mine):
            await client.post(
                f"{secured.url}/v1/sessions/{s}/events",
                headers=PUBLISHER,
                json={"type": "session.title", "data": {"title": s}},
            )
        frame = await feed.next(timeout=10)
    assert json.loads(frame.data)["session_id"] == mine  # theirs was filtered out


def test_serve_refuses_to_start_without_a_key(redis_server: RedisServer) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "HOME": "/tmp"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "--insecure" in out.stderr and "GATEWAY_JWT_SECRET" in out.stderr
    weak = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1"],
        env={**env, "GATEWAY_JWT_SECRET": "REPLACE-ME"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert weak.returncode == 2 and "32 characters" in weak.stderr


def test_token_command_mints_what_the_gateway_accepts() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "token",
            "carol",
            "-s",
            "team-c-*",
            "-a",
            "view",
            "--ttl",
            "120",
        ],
        env={"PATH": "/usr/bin:/bin", "GATEWAY_JWT_SECRET": SECRET, "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    who = Authenticator(Settings(jwt_secret=SECRET)).authenticate(out.stdout.strip())
    assert who.subject == "carol" and who.can("view", "team-c-9")
    assert not who.can("view", "team-d-1") and not who.can("command", "team-c-9")


def test_rs256_public_key_and_es256_jwks(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    pub = tmp_path / "rsa.pub.pem"
    pub.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = Authenticator(Settings(jwt_public_key=str(pub)))
    token = mint(rsa_pem, "svc", actions=["publish"], algorithm="RS256")
    assert auth.authenticate(token).can("publish", "any")
    # A token signed with HS256 using the public key as secret (algorithm confusion) fails.
    confused = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "k" * 40, "HS256")
    with pytest.raises(AuthError, match="rejected"):
        auth.authenticate(confused)

    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    auth = Authenticator(Settings(jwt_jwks_file=str(jwks), jwt_audience="gw"))
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    token = mint(ec_pem, "dash", algorithm="ES256", kid="k1", audience="gw")
    assert auth.authenticate(token).subject == "dash"
    wrong_aud = mint(ec_pem, "dash", algorithm="ES256", kid="k1", audience="other")
    with pytest.raises(AuthError):
        auth.authenticate(wrong_aud)


def test_insecure_mode_is_explicit() -> None:
    with pytest.raises(ValueError, match="--insecure"):
        Authenticator(Settings())
    assert Authenticator(Settings(insecure=True)).authenticate(None).subject == "anonymous"


async def test_client_stream_of_a_visible_session_works_end_to_end(secured, client, sid):
    """A viewer token streams its session through a stored connection (the happy path)."""
    s = f"team-a-{sid}"
    r = await client.post(
        f"{secured.url}/v1/sessions/{s}/connections", headers=ALICE, json={"from": "start"}
    )
    cid = r.json()["connection_id"]
    async with sse(
        client, f"{secured.url}/v1/sessions/{s}/connections/{cid}/events", headers=ALICE
    ) as stream:
        await client.post(
            f"{secured.url}/v1/sessions/{s}/events",
            headers=PUBLISHER,
            json={"type": "session.title", "data": {"title": "hello"}},
        )
        frame = await stream.next(timeout=10)
    assert frame.json()["data"] == {"title": "hello"}
    assert isinstance(httpx.URL(secured.url).port, int)


@pytest.fixture(scope="module")
def limited(redis_server: RedisServer) -> Iterator[Gateway]:
    gw = Gateway(
        redis_server.url,
        jwt_secret=SECRET,
        heartbeat_interval=1.0,
        max_streams_per_subject=2,
        connection_rate=6,
        cors_origins='["https://app.example"]',
    )
    yield gw
    gw.stop()


async def test_oldest_stream_of_a_subject_is_superseded_past_the_limit(limited, client, sid):
    dave = bearer("dave", ["*"], ["view"])
    url = f"{limited.url}/v1/sessions/{sid}/events?from=start"
    async with (
        sse(client, url, headers=dave) as first,
        sse(client, url, headers=dave) as second,
        sse(client, url, headers=dave) as third,
    ):
        frame = await first.next(timeout=10)
        assert frame.event == "close" and frame.json() == {"reason": "superseded"}
        with pytest.raises(StopAsyncIteration):
            await first.next(timeout=10)
        assert await second.nothing_for(0.5) and await third.nothing_for(0.1)
    # Another subject is not affected by dave's streams.
    async with sse(client, url, headers=bearer("erin", ["*"], ["view"])) as other:
        assert await other.nothing_for(0.3)


async def test_stream_and_connection_opening_is_rate_limited_per_subject(limited, client, sid):
    frank = bearer("frank", ["*"], ["view"])
    codes = []
    for _ in range(8):
        r = await client.post(
            f"{limited.url}/v1/sessions/{sid}/connections", headers=frank, json={}
        )
        codes.append(r.status_code)
    assert codes.count(201) == 6 and codes[-1] == 429, codes
    assert r.json()["code"] == "rate_limited" and 1 <= int(r.headers["retry-after"]) <= 61
    other = bearer("grace", ["*"], ["view"])
    r = await client.post(f"{limited.url}/v1/sessions/{sid}/connections", headers=other, json={})
    assert r.status_code == 201


async def test_cors_is_off_by_default_and_cross_site_writes_are_refused(
    secured, limited, client, sid
):
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = await client.options(f"{secured.url}/v1/sessions", headers=pre)
    assert "access-control-allow-origin" not in r.headers  # off by default
    r = await client.options(f"{limited.url}/v1/sessions", headers=pre)
    assert r.headers.get("access-control-allow-origin") == "https://app.example"
    url = f"{secured.url}/v1/sessions/team-a-{sid}/runs"
    body = {"input": "hi"}
    evil = {**ALICE, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    r = await client.post(url, headers=evil, json=body)
    assert r.status_code == 403 and r.json()["code"] == "cross_site"
    host = secured.url.split("//")[1]
    r = await client.post(url, headers={**ALICE, "Origin": "https://evil.example"}, json=body)
    assert r.status_code == 403  # no Sec-Fetch-Site: the Origin is checked against Host
    same = {**ALICE, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    assert (await client.post(url, headers=same, json=body)).status_code == 202
    # An allowed origin passes on the gateway that lists it.
    url2 = f"{limited.url}/v1/sessions/team-a-{sid}-2/runs"
    ok = {**ALICE, "Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
    assert (await client.post(url2, headers=ok, json=body)).status_code == 202


async def test_open_streams_end_when_their_token_expires(secured, client, sid):
    """A token used to be checked only when a stream started. Every kind of stream now ends
    at the token's ``exp`` with ``event: close`` ``{"reason": "token_expired"}``, and a
    manual-commit connection resumes with a fresh token from its stored offset: nothing
    lost, nothing repeated."""
    base = f"{secured.url}/v1/sessions/{sid}"
    owner = bearer("alice", [sid], ["view", "command"])
    short = bearer("alice", [sid], ["view", "command"], ttl=3)
    pub = bearer("agent-1", ["*"], ["publish"])
    await client.post(f"{base}/events", json={"type": "vendor.tick", "data": {"n": 0}}, headers=pub)
    conn = (
        await client.post(
            f"{base}/connections", json={"from": "start", "commit": "manual"}, headers=owner
        )
    ).json()
    cid = conn["connection_id"]
    mux = (await client.post(f"{secured.url}/v1/mux", headers=short)).json()["mux_id"]
    urls = [
        f"{base}/connections/{cid}/events",
        f"{base}/events?from=start",
        f"{secured.url}/v1/activity",
        f"{secured.url}/v1/mux/{mux}/events",
    ]
    seen: list[str] = []
    for url in urls:
        async with sse(client, url, short) as s:
            while True:
                f = await s.next(10)
                if f.event == "close":
                    break
                if url == urls[0] and f.id:
                    seen.append(f.id)
                    await client.post(
                        f"{base}/connections/{cid}/ack", json={"offset": f.id}, headers=short
                    )
        assert f.json() == {"reason": "token_expired"}, url
        short = bearer("alice", [sid], ["view", "command"], ttl=3)  # the next one's clock
    # Published after the first stream ended: the resumed connection gets exactly it.
    r = await client.post(
        f"{base}/events", json={"type": "vendor.tick", "data": {"n": 1}}, headers=pub
    )
    nxt = r.json()["offsets"][0]
    async with sse(client, urls[0], owner) as s:
        assert (await s.next(10)).id == nxt
    assert len(seen) == 1 and seen[0] < nxt


async def test_session_list_of_a_scoped_token_reaches_past_the_newest_200(secured, client, sid):
    """The list took the 200 newest sessions of everyone and then filtered by token, so a
    token scoped to an older session saw an empty list."""
    pub = bearer("agent-1", ["*"], ["publish"])
    mine = f"{sid}-mine"
    await client.post(
        f"{secured.url}/v1/sessions/{mine}/events", json={"type": "vendor.x"}, headers=pub
    )
    for i in range(210):  # newer sessions the token may not see
        await client.post(
            f"{secured.url}/v1/sessions/{sid}-other-{i}/events",
            json={"type": "vendor.x"},
            headers=pub,
        )
    r = await client.get(f"{secured.url}/v1/sessions", headers=bearer("carol", [mine], ["view"]))
    assert [s["session_id"] for s in r.json()["sessions"]] == [mine]
