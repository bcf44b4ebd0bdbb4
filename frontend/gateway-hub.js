// The per-browser hub: owns the ONE EventSource of the browser (GET /v1/mux/{id}/events),
// the folded state of every session any tab views, the subscriptions, and the manual
// commit (acks). It runs either in a SharedWorker (gateway-worker.js) or, where
// SharedWorker is missing, in the tab that holds the 'gateway-leader' Web Lock
// (gateway-client.js). Tabs talk to it with small messages (see PROTOCOL below); the
// transport only has to deliver them in order.
//
// No DOM and no storage here: a SharedWorker has neither localStorage nor sendBeacon.
// Tabs keep the mux id in localStorage and hand it to the hub in their hello.
//
// Tokens (GatewayClient option accessToken): a function cannot be posted to a worker, so
// tabs post token STRINGS: in their hello, whenever the value their option yields changes,
// and in answer to the hub's {t:'token?'}. The hub uses the latest one it got for every
// request (Authorization: Bearer) and in the EventSource and beacon URLs (?access_token=).
// It asks the tabs whose option is a function for a fresh token before each (re)connect,
// when the token is about to expire, and once on a 401 (then retries the request once).
//
// PROTOCOL (all messages are plain objects with a `t` field)
//   tab -> hub
//     {t:'hello', tab, mux, views:[sid], have:{sid:{state, offset}}, lock, token, refreshable}
//         register a tab; `mux` is its stored mux id (may be null), `have` the states it
//         already holds (used to seed a fresh hub without a snapshot), `lock` the name of
//         a Web Lock the tab holds while alive (the hub learns the tab died when it frees),
//         `token` its access token (or null), `refreshable` whether it can mint new ones
//     {t:'token', tab, token, refreshable}  the tab's current access token (it changed, or
//                                    the hub asked for it)
//     {t:'views', tab, sids:[sid]}   the full set of sessions the tab views now
//     {t:'sync', tab, sid}           send me this session's state again
//     {t:'reconnect', tab}           user asked to reconnect (resets 'superseded')
//     {t:'expect', sid, tab}         events should follow soon (a run started, or the
//                                    log is ahead of the state the tab holds)
//     {t:'describe', tab, id}        debug: reply {t:'described', id, data: describe()}
//     {t:'bye', tab}                 the tab goes away (pagehide)
//   hub -> tab
//     {t:'welcome', transport, mux, status, committed:{sid:offset}, subs:[sid]}
//     {t:'mux', mux}                 the mux id changed (tabs store it)
//     {t:'status', status}           'live'|'reconnecting'|'offline'|'superseded'
//     {t:'state', sid, state, offset}  full state (first view, reset, re-sync)
//     {t:'event', sid, env}          one envelope folded after the last state/event
//     {t:'activity', entry}          an activity-feed entry (every session)
//     {t:'read', offsets:{sid:offset}}  committed offsets that moved (after an ack)
//     {t:'subs', sids:[sid], held:{sid:offset}}  sessions viewed by some tab; how far the
//                                    hub processed each session it holds
//     {t:'error', sid, message, fatal, status, code}  loading a session keeps failing (the
//                                    hub retries unless fatal, e.g. 400 invalid_id, 403)
//     {t:'token?'}                   send me a fresh access token ({t:'token'}); only to
//                                    tabs that said they are `refreshable`
//     {t:'auth', problem}            the gateway refuses the hub's token even after a
//                                    refresh: {status, code, message}; null once it works

import { applyEvent, laterOffset, normalizeState, parseOffset } from './gateway-fold.js';

export const HUB_PROTOCOL = 1;

/**
 * fetch() options for a JSON request to the gateway (`body` undefined: no body).
 * @param {string} method
 * @param {unknown} [body]
 * @param {string|null} [token] access token, sent as `Authorization: Bearer`
 */
export function requestInit(method, body, token) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return init;
}

/**
 * Read a gateway response: `{ok, status, data, code, message}`. Error bodies are
 * `{"code", "message"}` (docs/api.md); a non-JSON body leaves `data` null.
 * @param {Response} res
 */
export async function readResponse(res) {
  let data = null;
  const text = res.status === 204 ? '' : await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  return {
    ok: res.ok,
    status: res.status,
    data,
    code: res.ok ? null : (data && data.code) || `http_${res.status}`,
    message: (data && data.message) || '',
  };
}

/**
 * `path` with `?access_token=` (or `&…`) appended when there is a token: for the
 * EventSource and sendBeacon, which cannot set headers.
 * @param {string} url
 * @param {string|null} [token]
 */
export function withToken(url, token) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(token)}`;
}

/**
 * The unverified claims of a JWT (`sub`, `exp`, …), or null. Only to plan refreshes and
 * notice a change of user: the gateway verifies tokens, the browser cannot.
 * @param {string|null} token
 */
export function tokenClaims(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const claims = JSON.parse(atob(b64));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

const ES_CONNECTING = 0;
const ES_CLOSED = 2;
const enc = encodeURIComponent;
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Unsubscribed sessions whose state the hub keeps, so switching back is instant. */
const CACHE_LIMIT = 24;
/** Events buffered for a session while its snapshot loads or it re-syncs. */
const BUFFER_LIMIT = 5000;
/**
 * A running (or just started) session silent this long gets one probe of its last
 * offset. An EventSource cannot see the gateway's `: hb` comments, so a stream stalled
 * by a half-open TCP connection, a proxy or a server bug is otherwise invisible.
 */
const STALL_MS = 12000;
/**
 * A session no tab views any more stays subscribed this long: a reload, or switching
 * away and straight back, then costs no DELETE + PUT (and no restart of its delivery).
 */
const UNSUBSCRIBE_GRACE_MS = 1500;
/**
 * A fresh hub adopts a subscription an earlier hub of this browser left on the mux
 * (leader hand-over, worker restart) without a PUT when the committed offset is at most
 * this many events behind the state it holds: the stream resumes from the committed
 * offset and de-duplication drops what it already has.
 */
const ADOPT_MAX_BEHIND = 500;
const WATCHDOG_TICK_MS = 4000;
/** How long the hub waits for a tab to answer {t:'token?'}. */
const TOKEN_WAIT_MS = 3000;
/** A token expiring within this long is refreshed before the next request or connect. */
const TOKEN_EARLY_MS = 30000;

class HttpError extends Error {
  constructor(r) {
    super(r.message || `${r.code} (HTTP ${r.status})`);
    this.status = r.status;
    this.code = r.code;
  }
}

/**
 * @typedef {{sid: string, state: object|null, offset: string|null, acked: string|null,
 *   tabs: Set<string>, subscribed: boolean, chain: Promise<void>, buffer: object[],
 *   resyncing: boolean, deadEpochs: Set<string>, lastUsed: number, failures: number,
 *   retryTimer: any}} Entry
 */

export class GatewayHub {
  /**
   * @param {object} opts
   * @param {(tabs: string[]|'*', msg: object) => void} opts.send deliver a message to tabs
   * @param {'shared-worker'|'broadcast-leader'} opts.transport what tabs report as transport
   * @param {string} [opts.baseUrl]
   * @param {typeof fetch} [opts.fetch]
   * @param {typeof EventSource} [opts.EventSource]
   * @param {LockManager|null} [opts.locks]
   * @param {number} [opts.ackIntervalMs] default 1000
   * @param {number} [opts.maxBackoffMs] default 10000
   * @param {number} [opts.unsubscribeGraceMs] default 1500
   * @param {(es: EventSource|null) => void} [opts.onStream] told when the EventSource changes
   * @param {(tab: string) => void} [opts.onTabGone] told when a tab is forgotten
   * @param {string} [opts.accessToken] a first token; tabs send theirs in hello and 'token'
   */
  constructor(opts) {
    this.baseUrl = (opts.baseUrl ?? '').replace(/\/+$/, '');
    this.transport = opts.transport;
    this._send = opts.send;
    this._fetch = opts.fetch ?? ((...a) => globalThis.fetch(...a));
    this._EventSource = opts.EventSource ?? globalThis.EventSource;
    this._locks = opts.locks === undefined ? (globalThis.navigator?.locks ?? null) : opts.locks;
    this._ackIntervalMs = Math.max(100, opts.ackIntervalMs ?? 1000);
    this._maxBackoffMs = opts.maxBackoffMs ?? 10000;
    this._graceMs = opts.unsubscribeGraceMs ?? UNSUBSCRIBE_GRACE_MS;
    this._onStream = opts.onStream ?? (() => {});
    this._onTabGone = opts.onTabGone ?? (() => {});

    this.muxId = null;
    /** @type {'live'|'reconnecting'|'offline'|'superseded'} */
    this.status = 'offline';
    /** @type {Map<string, {lockAbort: AbortController|null, views: Set<string>}>} */
    this.tabs = new Map();
    /** @type {Map<string, Entry>} */
    this.sessions = new Map();
    /** Committed offsets of this mux (GET /v1/mux/{id}, then our acks). */
    this.committed = new Map();
    /** Sessions GET /v1/mux/{id} reported subscribed when this hub started. */
    this._serverSubs = new Set();

    this._started = false;
    this._closed = false;
    this._ready = null; // Promise<string>: the mux id once validated or created
    this._es = null;
    this._esGen = 0;
    this._reopenTimer = null;
    this._backoff = 0;
    this._everLive = false;
    this._superseded = []; // timestamps of `event: close` superseded
    this._ackTimer = null;
    this._watchTimer = null;
    this._probing = false;
    /** Times the watchdog found the stream silent while the log moved on. */
    this.stalls = 0;
    this._log = []; // recent requests and decisions, for describe()
    this._acking = false;
    this._subsKey = '';

    /** The latest access token a tab gave us (null: none; the gateway may not need one). */
    this._token = typeof opts.accessToken === 'string' && opts.accessToken ? opts.accessToken : null;
    this._tokenWaiters = new Set(); // resolve functions of a pending {t:'token?'}
    this._tokenAsk = null; // Promise while tabs are asked for a fresh token
    this._staleAsks = 0; // asks in a row that brought no new token after a 401
    this._nextStaleAsk = 0; // no new ask for the same refused token before then
    this._nextEarlyAsk = 0;
    this._askedAt = 0; // when tabs last answered {t:'token?'} (or the wait timed out)
    this._wakers = new Set(); // end the backoff of the mux loops early (a new token came)
    /** {status, code, message} while the gateway refuses our token, else null. */
    this.authProblem = null;
  }

  // ---- tabs -------------------------------------------------------------------

  /**
   * A message from a tab.
   * @param {object} msg
   */
  handle(msg) {
    if (!msg || typeof msg !== 'object' || this._closed) return;
    const tab = msg.tab;
    switch (msg.t) {
      case 'hello': this._hello(msg); break;
      case 'views': if (this.tabs.has(tab)) this._setViews(tab, msg.sids, null); break;
      case 'sync': {
        const e = this.sessions.get(msg.sid);
        if (e && e.state && !e.resyncing) this._send([tab], this._stateMsg(e));
        break;
      }
      case 'reconnect':
        this._superseded = [];
        if (this.status !== 'live') this._reopen(0);
        break;
      case 'expect': {
        // The tab started a run here, or saw the log ahead of us: events should follow.
        const e = this.sessions.get(msg.sid);
        if (e && !(e.expectUntil > Date.now())) {
          e.expectUntil = Date.now() + 2 * STALL_MS;
          e.lastEventAt = Date.now();
        }
        break;
      }
      case 'describe': this._send([tab], { t: 'described', id: msg.id, data: this.describe() }); break;
      case 'token': {
        const info = this.tabs.get(tab);
        if (info && typeof msg.refreshable === 'boolean') info.refreshable = msg.refreshable;
        this._takeToken(msg.token);
        break;
      }
      case 'bye': this.removeTab(tab); break;
      default: break;
    }
  }

  _hello(msg) {
    const tab = msg.tab;
    if (typeof tab !== 'string') return;
    let info = this.tabs.get(tab);
    if (!info) {
      info = { lockAbort: null, views: new Set(), refreshable: false };
      this.tabs.set(tab, info);
      if (msg.lock && this._locks) {
        // Granted only once the tab's own lock is freed: the tab closed or crashed
        // without a 'bye' (a hub cannot otherwise see a MessagePort die).
        const ctl = new AbortController();
        info.lockAbort = ctl;
        this._locks.request(msg.lock, { signal: ctl.signal }, () => {
          if (this.tabs.get(tab) === info) this.removeTab(tab);
        }).catch(() => { /* aborted on bye */ });
      }
    }
    info.refreshable = Boolean(msg.refreshable);
    this._takeToken(msg.token);
    if (!this.muxId && !this._ready && typeof msg.mux === 'string' && msg.mux) this.muxId = msg.mux;
    this._start();
    this._send([tab], {
      t: 'welcome',
      transport: this.transport,
      protocol: HUB_PROTOCOL,
      mux: this.muxId,
      status: this.status,
      committed: Object.fromEntries(this.committed),
      subs: this._subs(),
      auth: this.authProblem,
    });
    this._setViews(tab, msg.views, msg.have);
  }

  /** Forget a tab (bye, or its liveness lock was freed). */
  removeTab(tab) {
    const info = this.tabs.get(tab);
    if (!info) return;
    this.tabs.delete(tab);
    if (info.lockAbort) info.lockAbort.abort();
    this._setViews(tab, [], null, info);
    this._onTabGone(tab);
  }

  _setViews(tab, sids, have, info = this.tabs.get(tab)) {
    const wanted = new Set(Array.isArray(sids) ? sids.filter((s) => typeof s === 'string' && s) : []);
    for (const sid of info.views) {
      if (wanted.has(sid)) continue;
      const e = this.sessions.get(sid);
      if (e) {
        e.tabs.delete(tab);
        e.lastUsed = Date.now();
        if (!e.tabs.size) e.releaseAt = Date.now() + this._graceMs;
        this._kick(e);
      }
    }
    for (const sid of wanted) {
      let e = this.sessions.get(sid);
      if (!e) {
        e = this._newEntry(sid);
        this.sessions.set(sid, e);
      }
      const seed = have && have[sid];
      if (!e.state && seed && seed.state && parseOffset(seed.offset) && !e.resyncing) {
        // A fresh hub (new leader, restarted worker, BFCache restore) adopts what the
        // tab already holds instead of reloading the snapshot.
        e.state = normalizeState(sid, seed.state);
        e.offset = seed.offset;
      }
      if (!e.tabs.has(tab)) {
        e.tabs.add(tab);
        if (e.state && !e.resyncing) this._send([tab], this._stateMsg(e));
      }
      e.lastUsed = Date.now();
      this._kick(e);
    }
    info.views = wanted;
    this._announceSubs();
    this._evict();
  }

  _newEntry(sid) {
    return {
      sid,
      state: null,
      offset: null,
      acked: null,
      tabs: new Set(),
      subscribed: false,
      chain: Promise.resolve(),
      buffer: [],
      resyncing: false,
      deadEpochs: new Set(),
      lastUsed: Date.now(),
      failures: 0,
      retryTimer: null,
      releaseAt: 0,
      lastEventAt: Date.now(),
      lastProbeAt: 0,
      expectUntil: 0,
    };
  }

  _stateMsg(e) {
    return { t: 'state', sid: e.sid, state: e.state, offset: e.offset };
  }

  _subs() {
    return [...this.sessions.values()].filter((e) => e.tabs.size > 0).map((e) => e.sid).sort();
  }

  _announceSubs() {
    const subs = this._subs();
    const key = subs.join('\n');
    if (key === this._subsKey) return;
    this._subsKey = key;
    // `held`: how far the hub has processed each session it holds. A session a tab
    // just left is read up to there even before the ack that commits it returns.
    const held = {};
    for (const e of this.sessions.values()) if (e.state && e.offset) held[e.sid] = e.offset;
    this._send('*', { t: 'subs', sids: subs, held });
  }

  _evict() {
    const idle = [...this.sessions.values()]
      .filter((e) => e.tabs.size === 0 && !e.subscribed && !e.resyncing)
      .sort((a, b) => b.lastUsed - a.lastUsed);
    for (const e of idle.slice(CACHE_LIMIT)) this.sessions.delete(e.sid);
  }

  // ---- HTTP -------------------------------------------------------------------

  _url(path) {
    return this.baseUrl + path;
  }

  /**
   * One request with the latest token. A token about to expire is refreshed first; on a
   * 401 the tabs are asked for a fresh token once and the request is retried with it.
   */
  async _request(method, path, body) {
    await this._refreshIfExpiring();
    const token = this._token;
    let r = await this._fetchOnce(method, path, body, token);
    if (r.status === 401 && !this._closed) {
      const fresh = await this._refreshToken(token);
      if (fresh && fresh !== token) r = await this._fetchOnce(method, path, body, fresh);
    }
    if (r.status === 401) this._setAuthProblem(r);
    else if (r.ok) this._setAuthProblem(null);
    return r;
  }

  async _fetchOnce(method, path, body, token) {
    let res;
    try {
      res = await this._fetch(this._url(path), requestInit(method, body, token));
    } catch (err) {
      this._note(`${method} ${path} failed: ${err.message}`);
      throw err;
    }
    if (method !== 'GET' || !res.ok) this._note(`${method} ${path} ${res.status}`);
    return readResponse(res);
  }

  // ---- access tokens ----------------------------------------------------------

  /** A tab sent its token (hello, a change, or an answer to {t:'token?'}). */
  _takeToken(token) {
    const waiters = [...this._tokenWaiters];
    this._tokenWaiters.clear();
    if (typeof token === 'string' && token && token !== this._token) {
      const before = tokenClaims(this._token);
      this._token = token;
      this._staleAsks = 0;
      this._nextStaleAsk = 0;
      this._nextEarlyAsk = 0;
      const after = tokenClaims(token);
      if (before && after && before.sub !== after.sub) {
        this._userChanged(before.sub, after.sub);
      } else if (this._started) {
        // What the old token was refused may work now: sessions that failed (403), and
        // a stream waiting out its backoff.
        for (const e of this.sessions.values()) {
          if (e.tabs.size && !e.subscribed && !e.resyncing && e.failures) this._kick(e);
        }
        if (this.authProblem && this._reopenTimer) this._reopen(0);
      }
      for (const wake of [...this._wakers]) wake();
    }
    for (const resolve of waiters) resolve();
  }

  /**
   * Ask the refreshable tabs for a fresh token; resolves with the token then in use.
   * `refused`: the token the gateway just refused (401). Asking again for the same
   * refused token waits for a growing backoff, so a page whose token function keeps
   * returning a dead token is not asked in a hot loop.
   * @param {string|null} [refused]
   */
  async _refreshToken(refused) {
    if (refused !== undefined && refused !== this._token) return this._token; // a newer one came
    const tabs = [...this.tabs].filter(([, info]) => info.refreshable).map(([tab]) => tab);
    if (!tabs.length || this._closed) return this._token;
    if (!this._tokenAsk) {
      // Tabs just answered (e.g. right before this reconnect): their answer is current.
      if (Date.now() - this._askedAt < 1000) return this._token;
      if (refused !== undefined && refused === this._token && Date.now() < this._nextStaleAsk) return this._token;
      this._note('asking tabs for a fresh token');
      this._tokenAsk = new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this._tokenWaiters.delete(done);
          this._askedAt = Date.now();
          resolve();
        };
        const timer = setTimeout(done, TOKEN_WAIT_MS);
        this._tokenWaiters.add(done);
        this._send(tabs, { t: 'token?' });
      }).finally(() => { this._tokenAsk = null; });
    }
    await this._tokenAsk;
    if (refused !== undefined && refused === this._token) {
      // Nothing new: back off before asking again for this token.
      this._staleAsks += 1;
      this._nextStaleAsk = Date.now() + Math.min(this._maxBackoffMs, 1000 * 2 ** Math.min(this._staleAsks, 6));
    }
    return this._token;
  }

  /** Before a request: a token expiring soon (per its unverified `exp`) is refreshed. */
  async _refreshIfExpiring() {
    const exp = tokenClaims(this._token)?.exp;
    if (typeof exp !== 'number' || exp * 1000 - Date.now() > TOKEN_EARLY_MS) return;
    if (Date.now() < this._nextEarlyAsk && !this._tokenAsk) return;
    this._nextEarlyAsk = Date.now() + 5000;
    await this._refreshToken();
  }

  _setAuthProblem(r) {
    const problem = r ? { status: r.status, code: r.code, message: r.message || '' } : null;
    const same = problem && this.authProblem && problem.code === this.authProblem.code;
    if (same || (!problem && !this.authProblem)) return;
    this.authProblem = problem;
    if (problem) console.warn(`gateway hub: the gateway refuses the token (${problem.code})`);
    this._send('*', { t: 'auth', problem });
  }

  /**
   * The tabs now use another user's token. Muxes and their connections belong to the
   * subject that created them, and states were loaded with the old user's rights: drop
   * them and start over with a new mux.
   */
  _userChanged(from, to) {
    this._note(`token subject changed from ${from} to ${to}`);
    const muxId = this.muxId;
    if (!muxId || this._closed) return; // the mux is being created: with the new token
    this._closeStream();
    for (const e of [...this.sessions.values()]) {
      if (!e.tabs.size && !e.resyncing) {
        clearTimeout(e.retryTimer);
        this.sessions.delete(e.sid);
        continue;
      }
      e.subscribed = false;
      e.acked = null;
      if (!e.resyncing) {
        e.state = null;
        e.offset = null;
        e.buffer = [];
      }
    }
    this._serverSubs.clear();
    this._renewMux(muxId);
  }

  /** sleep(ms) of a retry loop; a new token ends it early (what failed may work now). */
  _pause(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this._wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this._wakers.add(wake);
    });
  }

  // ---- mux lifecycle ----------------------------------------------------------

  _start() {
    if (this._started || this._closed) return;
    this._started = true;
    this._setStatus('reconnecting');
    this._ready = this._initMux();
    this._ready.then(() => this._openStream(), () => {});
    this._ackTimer = setInterval(() => { this._ackTick(); }, this._ackIntervalMs);
    this._watchTimer = setInterval(() => { this._watchdog(); }, WATCHDOG_TICK_MS);
  }

  /** Validate the stored mux id (and learn its committed offsets) or create a mux. */
  async _initMux() {
    let delay = 500;
    for (;;) {
      if (this._closed) throw new Error('hub closed');
      try {
        if (this.muxId) {
          const r = await this._request('GET', `/v1/mux/${enc(this.muxId)}`);
          if (r.ok) {
            this._learnMux(r.data);
            return this.muxId;
          }
          if (r.status !== 404 && r.status !== 400) throw new HttpError(r);
          this.muxId = null; // expired or foreign: start a new one
        }
        return await this._createMux();
      } catch (err) {
        this._setStatus('offline');
        if (err.status === 403) this._setAuthProblem(err); // a token without `view`
        console.warn('gateway hub: cannot open the mux, retrying', err);
        await this._pause(delay);
        delay = Math.min(delay * 2, this._maxBackoffMs);
      }
    }
  }

  _learnMux(data) {
    this._learnCommitted(data);
    const sessions = (data && data.sessions) || {};
    const stale = Object.keys(sessions).filter((sid) => sessions[sid] && sessions[sid].subscribed);
    this._serverSubs = new Set(stale);
    // Subscriptions left by an earlier life of this browser (closed before its DELETE
    // went out) would stream sessions nobody views. Give tabs a moment to say what
    // they view, then drop the rest.
    if (stale.length) {
      setTimeout(() => {
        for (const sid of stale) {
          let e = this.sessions.get(sid);
          if (e && (e.tabs.size || e.subscribed)) continue;
          if (!e) {
            e = this._newEntry(sid);
            this.sessions.set(sid, e);
          }
          e.subscribed = true; // so that reconcile sends the DELETE
          this._kick(e);
        }
      }, 5000);
    }
  }

  async _createMux() {
    const r = await this._request('POST', '/v1/mux', {});
    if (!r.ok || !r.data || typeof r.data.mux_id !== 'string') throw new HttpError(r);
    this.muxId = r.data.mux_id;
    this.committed.clear();
    this._serverSubs.clear();
    for (const e of this.sessions.values()) {
      e.subscribed = false;
      e.acked = null;
    }
    this._send('*', { t: 'mux', mux: this.muxId });
    return this.muxId;
  }

  /** The mux `staleId` is gone (404 mux_not_found): create a new one and re-subscribe. */
  _renewMux(staleId) {
    if (this.muxId !== staleId || this._closed) return this._ready;
    this.muxId = null;
    this._ready = (async () => {
      let delay = 500;
      for (;;) {
        try {
          return await this._createMux();
        } catch (err) {
          if (this._closed) throw err;
          console.warn('gateway hub: cannot create a mux, retrying', err);
          await this._pause(delay);
          delay = Math.min(delay * 2, this._maxBackoffMs);
        }
      }
    })();
    this._ready.then(() => {
      this._openStream();
      for (const e of this.sessions.values()) if (e.tabs.size) this._kick(e);
    }, () => {});
    return this._ready;
  }

  // ---- the one EventSource ----------------------------------------------------

  _openStream() {
    if (this._closed || !this.muxId) return;
    this._closeStream();
    clearTimeout(this._reopenTimer);
    this._reopenTimer = null;
    const gen = ++this._esGen;
    const muxId = this.muxId;
    const es = new this._EventSource(withToken(this._url(`/v1/mux/${enc(muxId)}/events`), this._token));
    this._es = es;
    this._onStream(es);
    if (this.status !== 'live') this._setStatus('reconnecting');
    const live = (fn) => (ev) => { if (this._esGen === gen && !this._closed) fn(ev); };

    es.addEventListener('open', live(() => {
      this._note('stream open');
      this._backoff = 0;
      this._setStatus('live');
    }));
    es.addEventListener('message', live((ev) => this._onEnvelope(ev)));
    es.addEventListener('subscribed', live((ev) => this._onSubscribed(parse(ev))));
    es.addEventListener('unsubscribed', live(() => { /* informational */ }));
    es.addEventListener('reset', live((ev) => this._onReset(parse(ev))));
    es.addEventListener('session', live((ev) => {
      const entry = parse(ev);
      if (entry && typeof entry.session_id === 'string') this._send('*', { t: 'activity', entry });
    }));
    es.addEventListener('close', live((ev) => this._onClose(parse(ev))));
    es.addEventListener('error', live(() => {
      if (es.readyState === ES_CLOSED) {
        // Non-200 answer (404 for an expired mux, 5xx): the browser gave up. We retry
        // ourselves with backoff, re-validating the mux first.
        this._closeStream();
        this._setStatus('offline');
        this._reopen();
      } else if (es.readyState === ES_CONNECTING) {
        // The browser retries on its own (`retry: 2000`); every session resumes from
        // its committed offset and we drop what we already hold.
        this._setStatus('reconnecting');
      }
    }));
  }

  _closeStream() {
    if (!this._es) return;
    this._esGen += 1;
    this._es.close();
    this._es = null;
    this._onStream(null);
  }

  _reopen(delayMs) {
    if (this._closed) return;
    clearTimeout(this._reopenTimer);
    let delay = delayMs;
    if (delay == null) {
      const base = Math.min(this._maxBackoffMs, 1000 * 2 ** this._backoff);
      delay = Math.min(this._maxBackoffMs, base * (0.8 + Math.random() * 0.4));
      this._backoff += 1;
    }
    this._reopenTimer = setTimeout(async () => {
      this._reopenTimer = null;
      const muxId = this.muxId;
      if (!muxId) return; // a renewal is under way and opens the stream itself
      try {
        // The EventSource's token may be what failed (it cannot tell us): refresh first.
        await this._refreshToken();
        const r = await this._request('GET', `/v1/mux/${enc(muxId)}`);
        if (r.status === 404) {
          this._renewMux(muxId);
          return;
        }
        if (!r.ok) throw new HttpError(r);
        this._learnCommitted(r.data);
      } catch (err) {
        console.warn('gateway hub: cannot reconnect, retrying', err);
        this._reopen();
        return;
      }
      if (this.muxId === muxId) this._openStream();
    }, delay);
  }

  /** Merge GET /v1/mux/{id}'s committed offsets; tell tabs what moved. */
  _learnCommitted(data) {
    const sessions = (data && data.sessions) || {};
    const offsets = {};
    for (const [sid, info] of Object.entries(sessions)) {
      if (info && typeof info.offset === 'string') offsets[sid] = info.offset;
    }
    this._acked(offsets, false);
  }

  _onClose(data) {
    if (data && data.reason === 'token_expired') {
      this._tokenExpired();
      return;
    }
    if (!data || data.reason !== 'superseded') return;
    this._closeStream();
    this._setStatus('superseded');
    const now = Date.now();
    this._superseded = this._superseded.filter((t) => now - t < 60000);
    this._superseded.push(now);
    // Another hub attached our mux (a window that could not share our worker). Take it
    // back once after 1 s; if it keeps happening, stop the ping-pong and wait for
    // the user ('reconnect').
    if (this._superseded.length > 3) return;
    this._reopen(1000);
  }

  /**
   * The gateway ended the stream at the token's `exp`. Ack what the tabs have processed
   * (so the stored offsets are exact), get a fresh token from the tabs, and reopen at once:
   * every session resumes from its stored offset, nothing is lost or shown twice.
   */
  async _tokenExpired() {
    this._closeStream();
    this._setStatus('reconnecting');
    this._note('stream ended: token expired');
    try {
      await this._flushAcks([...this.sessions.values()]);
    } catch (err) {
      console.warn('gateway hub: ack before the token refresh failed', err);
    }
    await this._refreshToken(this._token);
    this._reopen(0);
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    if (status === 'live') this._everLive = true;
    this._send('*', { t: 'status', status });
  }

  // ---- frames -----------------------------------------------------------------

  _onEnvelope(ev) {
    const env = parse(ev);
    if (!env || typeof env !== 'object') return;
    if (env.offset == null && ev.lastEventId) env.offset = ev.lastEventId;
    const e = this.sessions.get(env.session_id);
    if (!e || (!e.tabs.size && !e.subscribed)) return;
    if (!e.state || e.resyncing) {
      if (e.buffer.length < BUFFER_LIMIT) e.buffer.push(env);
      return;
    }
    this._apply(e, env, false);
  }

  /**
   * Fold one envelope into the entry. `quiet`: a gap or foreign epoch drops the event
   * instead of starting a re-sync (used when draining a buffer right after a re-sync,
   * whose re-PUT makes the gateway deliver those events again anyway).
   */
  _apply(e, env, quiet) {
    const off = parseOffset(env.offset);
    if (!off) return; // without a position we can neither de-duplicate nor ack it
    const cur = parseOffset(e.offset);
    if (!cur || off.epoch !== cur.epoch) {
      if (quiet || e.deadEpochs.has(off.epoch)) return;
      this._resync(e, env);
      return;
    }
    if (off.seq <= cur.seq) return; // replay after a reconnect, or already in the snapshot
    if (off.seq > cur.seq + 1) {
      // Seqs are consecutive: a jump proves events are missing. Re-sync rather than
      // render a silently wrong transcript.
      if (!quiet) this._resync(e, env);
      return;
    }
    e.lastEventAt = Date.now();
    if (env.type === 'run.started') e.expectUntil = 0;
    e.state = applyEvent(e.state, env);
    e.offset = env.offset;
    if (e.tabs.size) this._send([...e.tabs], { t: 'event', sid: e.sid, env });
  }

  _onSubscribed(data) {
    if (!data) return;
    this._note(`subscribed ${data.session_id} after ${data.offset}`);
    const e = this.sessions.get(data.session_id);
    if (!e || !e.state || e.resyncing) return;
    const from = parseOffset(data.offset);
    const cur = parseOffset(e.offset);
    if (!from || !cur) return;
    // Delivery resumes after `from`: if that is beyond what we hold, the events in
    // between will never come.
    if (from.epoch !== cur.epoch ? !e.deadEpochs.has(from.epoch) : from.seq > cur.seq) this._resync(e, null);
  }

  _onReset(data) {
    if (!data) return;
    const e = this.sessions.get(data.session_id);
    if (e && (e.tabs.size || e.subscribed)) this._resync(e, null);
  }

  // ---- per-session reconciliation ---------------------------------------------

  /** Queue a reconciliation of the entry: subscribe if viewed, unsubscribe if not. */
  _kick(e) {
    clearTimeout(e.retryTimer);
    e.retryTimer = null;
    e.chain = e.chain.then(() => this._reconcile(e)).catch((err) => {
      if (this._closed) return;
      e.failures += 1;
      console.warn(`gateway hub: session ${e.sid}: ${err.message}`);
      const info = { t: 'error', sid: e.sid, message: err.message, status: err.status ?? null, code: err.code ?? null };
      if (err.status === 400 || err.status === 403) {
        // invalid_id and the like, or a token without rights on this session (403
        // forbidden): retrying cannot help (a new token retries, see _takeToken).
        if (e.tabs.size) this._send([...e.tabs], { ...info, fatal: true });
        return;
      }
      if (e.failures >= 3 && e.tabs.size) this._send([...e.tabs], { ...info, fatal: false });
      const delay = Math.min(this._maxBackoffMs, 500 * 2 ** Math.min(e.failures, 5));
      e.retryTimer = setTimeout(() => { e.retryTimer = null; this._kick(e); }, delay);
    });
  }

  async _reconcile(e) {
    for (let round = 0; round < 5 && !this._closed; round++) {
      const want = e.tabs.size > 0;
      if (want && !e.subscribed) {
        const done = await this._subscribe(e);
        if (!done) continue; // the mux was renewed or the offset refused: go again
      } else if (!want && e.subscribed) {
        const wait = (e.releaseAt || 0) - Date.now();
        if (wait > 0) {
          // Grace period; a tab viewing it again cancels this timer (_kick).
          clearTimeout(e.retryTimer);
          e.retryTimer = setTimeout(() => { e.retryTimer = null; this._kick(e); }, wait + 10);
          return;
        }
        await this._unsubscribe(e);
      }
      e.failures = 0;
      return;
    }
  }

  async _loadSnapshot(sid) {
    const path = `/v1/sessions/${enc(sid)}/snapshot`;
    let r = await this._request('GET', path);
    if (r.status === 404) {
      // Viewing a session id means wanting it; subscribing would need it anyway.
      const c = await this._request('POST', '/v1/sessions', { session_id: sid });
      if (!c.ok) throw new HttpError(c);
      r = await this._request('GET', path);
    }
    if (!r.ok) throw new HttpError(r);
    return { state: normalizeState(sid, r.data && r.data.state), offset: r.data.offset };
  }

  /** Replace the entry's state with a fresh snapshot; tell its tabs. */
  async _reload(e) {
    const snap = await this._loadSnapshot(e.sid);
    const old = parseOffset(e.offset);
    const now = parseOffset(snap.offset);
    if (old && now && old.epoch !== now.epoch) e.deadEpochs.add(old.epoch);
    e.state = snap.state;
    e.offset = snap.offset;
    if (e.tabs.size) this._send([...e.tabs], this._stateMsg(e));
  }

  /** @returns {Promise<boolean>} true once subscribed */
  async _subscribe(e) {
    const muxId = await this._ready;
    if (!e.state) {
      e.buffer = e.buffer.slice(-BUFFER_LIMIT);
      await this._reload(e);
      this._drain(e);
    }
    if (!e.tabs.size) return true; // nobody wants it any more; the next round unsubscribes
    if (this._serverSubs.delete(e.sid)) {
      const c = parseOffset(this.committed.get(e.sid));
      const cur = parseOffset(e.offset);
      if (c && cur && c.epoch === cur.epoch && c.seq <= cur.seq && cur.seq - c.seq <= ADOPT_MAX_BEHIND) {
        e.subscribed = true;
        e.acked = this.committed.get(e.sid);
        return true;
      }
    }
    const r = await this._request('PUT', `/v1/mux/${enc(muxId)}/sessions/${enc(e.sid)}`, { from: e.offset });
    if (r.ok) {
      e.subscribed = true;
      const committed = r.data && r.data.offset;
      if (typeof committed === 'string') e.acked = committed;
      return true;
    }
    if (r.status === 404 && r.code === 'mux_not_found') {
      await this._renewMux(muxId);
      return false;
    }
    if (r.status === 404 || r.status === 409 || (r.status === 400 && r.code === 'invalid_offset')) {
      // Our offset is from a log the gateway no longer has (offset_ahead), or the
      // session vanished: start over from a fresh snapshot.
      e.state = null;
      e.offset = null;
      return false;
    }
    throw new HttpError(r);
  }

  async _unsubscribe(e) {
    const muxId = await this._ready;
    await this._flushAcks([e]);
    const r = await this._request('DELETE', `/v1/mux/${enc(muxId)}/sessions/${enc(e.sid)}`);
    if (!r.ok && r.status !== 404) throw new HttpError(r);
    e.subscribed = false;
    e.buffer = [];
    this._evict();
  }

  _drain(e) {
    const buffered = e.buffer.splice(0);
    for (const env of buffered) this._apply(e, env, true);
  }

  /** Reload the snapshot and re-subscribe from its offset (reset, gap, other epoch). */
  _resync(e, env) {
    if (env && e.buffer.length < BUFFER_LIMIT) e.buffer.push(env);
    if (e.resyncing) return;
    this._note(`resync ${e.sid} at ${e.offset}${env ? ` on ${env.offset}` : ''}`);
    e.resyncing = true;
    e.chain = e.chain.then(async () => {
      let delay = 500;
      for (;;) {
        if (this._closed) return;
        if (!e.tabs.size) {
          // Nobody is looking: forget the stale state; the next view reloads it.
          e.state = null;
          e.offset = null;
          e.buffer = [];
          e.resyncing = false;
          this._kick(e);
          return;
        }
        try {
          await this._reload(e);
          const muxId = await this._ready;
          const r = await this._request('PUT', `/v1/mux/${enc(muxId)}/sessions/${enc(e.sid)}`, { from: e.offset });
          if (r.status === 404 && r.code === 'mux_not_found') {
            e.subscribed = false;
            await this._renewMux(muxId);
          } else if (!r.ok) {
            throw new HttpError(r);
          } else {
            e.subscribed = true;
          }
          break;
        } catch (err) {
          console.warn(`gateway hub: re-sync of ${e.sid} failed, retrying`, err);
          await sleep(delay);
          delay = Math.min(delay * 2, this._maxBackoffMs);
        }
      }
      e.resyncing = false;
      this._drain(e);
      this._kick(e);
    });
  }

  // ---- stall watchdog ---------------------------------------------------------

  async _watchdog() {
    if (this._closed || this._probing || !this._es || this.status !== 'live') return;
    const now = Date.now();
    const suspects = [...this.sessions.values()].filter((e) => e.subscribed && e.state && !e.resyncing
      && (e.state.status === 'running' || e.expectUntil > now)
      && now - e.lastEventAt > STALL_MS && now - e.lastProbeAt > STALL_MS);
    if (!suspects.length) return;
    this._probing = true;
    try {
      const behind = [];
      for (const e of suspects) {
        e.lastProbeAt = Date.now();
        const r = await this._request('GET', `/v1/sessions/${enc(e.sid)}`);
        if (r.ok && r.data && offsetBeyond(r.data.last_offset, e.offset)) behind.push([e, e.offset]);
        if (r.ok && e.expectUntil && r.data && r.data.status !== 'running') e.expectUntil = 0;
      }
      if (!behind.length) return;
      // Give in-flight frames a moment, then check nothing moved.
      await sleep(1500);
      if (behind.some(([e, off]) => e.offset === off && e.subscribed && !e.resyncing)) {
        console.warn('gateway hub: the stream is silent while the log moved on; reconnecting');
        this.stalls += 1;
        this._closeStream();
        this._setStatus('reconnecting');
        this._reopen(0);
      }
    } catch {
      /* the server is unreachable: the EventSource reports that itself */
    } finally {
      this._probing = false;
    }
  }

  // ---- manual commit ----------------------------------------------------------

  _dirty(entries = this.sessions.values()) {
    const out = [];
    for (const e of entries) {
      // Only subscribed sessions: the gateway knows nothing to commit for the others.
      if (e.subscribed && e.state && e.offset && e.offset !== e.acked && !e.resyncing
          && parseOffset(e.offset)) out.push(e);
    }
    return out;
  }

  _ackTick() {
    if (this._acking || !this.muxId) return;
    const dirty = this._dirty();
    if (!dirty.length) return;
    this._acking = true;
    this._flushAcks(dirty)
      .catch((err) => console.warn('gateway hub: ack failed', err))
      .finally(() => { this._acking = false; });
  }

  /** One POST /v1/mux/{id}/ack for the given entries' offsets. */
  async _flushAcks(entries) {
    const dirty = this._dirty(entries);
    const muxId = this.muxId;
    if (!dirty.length || !muxId) return;
    const offsets = {};
    for (const e of dirty) offsets[e.sid] = e.offset;
    const r = await this._request('POST', `/v1/mux/${enc(muxId)}/ack`, { offsets });
    if (r.ok) {
      this._acked(offsets);
    } else if (r.status === 404 && r.code === 'mux_not_found') {
      this._renewMux(muxId);
    } else if (r.status === 404) {
      // session_not_subscribed: the mux does not know one of them (the whole batch is
      // refused). Subscribe them again; the next tick acks.
      for (const e of dirty) {
        e.subscribed = false;
        this._kick(e);
      }
    } else {
      throw new HttpError(r);
    }
  }

  _acked(offsets, ours = true) {
    const moved = {};
    for (const [sid, offset] of Object.entries(offsets)) {
      const e = this.sessions.get(sid);
      if (e && ours) e.acked = laterOffset(e.acked, offset);
      const c = laterOffset(this.committed.get(sid), offset);
      if (c !== this.committed.get(sid)) {
        this.committed.set(sid, c);
        moved[sid] = c;
      }
    }
    if (Object.keys(moved).length) this._send('*', { t: 'read', offsets: moved });
  }

  /**
   * What an unloading leader tab sends with navigator.sendBeacon: every offset not
   * yet acked. Marks them acked (a beacon is fire and forget).
   * @returns {{url: string, body: string}|null}
   */
  takeBeacon() {
    const dirty = this._dirty();
    if (!dirty.length || !this.muxId) return null;
    const offsets = {};
    for (const e of dirty) offsets[e.sid] = e.offset;
    for (const e of dirty) e.acked = e.offset;
    const url = withToken(this._url(`/v1/mux/${enc(this.muxId)}/ack`), this._token);
    return { url, body: JSON.stringify({ offsets }) };
  }

  /** Stop everything (the leader tab leaves; the worker has no tab left). */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearInterval(this._ackTimer);
    clearInterval(this._watchTimer);
    clearTimeout(this._reopenTimer);
    this._closeStream();
    for (const info of this.tabs.values()) if (info.lockAbort) info.lockAbort.abort();
    for (const e of this.sessions.values()) clearTimeout(e.retryTimer);
    this.tabs.clear();
  }

  _note(text) {
    this._log.push(`${new Date().toISOString().slice(11, 23)} ${text}`);
    if (this._log.length > 200) this._log.splice(0, this._log.length - 200);
  }

  /** For tests and debugging (client.describeHub()). */
  describe() {
    return {
      transport: this.transport,
      mux: this.muxId,
      status: this.status,
      stalls: this.stalls,
      tabs: [...this.tabs.keys()],
      stream: this._es ? this._es.readyState : null,
      token: this._token ? { sub: tokenClaims(this._token)?.sub ?? null, exp: tokenClaims(this._token)?.exp ?? null } : null,
      auth: this.authProblem,
      sessions: [...this.sessions.values()].map((e) => ({
        sid: e.sid,
        offset: e.offset,
        acked: e.acked,
        tabs: e.tabs.size,
        subscribed: e.subscribed,
        resyncing: e.resyncing,
        status: e.state ? e.state.status : null,
      })),
      log: this._log.slice(),
    };
  }
}

/** Whether `a` is beyond `b` in the same log (a different epoch counts as beyond). */
function offsetBeyond(a, b) {
  const pa = parseOffset(a);
  const pb = parseOffset(b);
  if (!pa || !pb) return false;
  return pa.epoch !== pb.epoch || pa.seq > pb.seq;
}

function parse(ev) {
  try { return JSON.parse(ev.data); } catch { return null; }
}
