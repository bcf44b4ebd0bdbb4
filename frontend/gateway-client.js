// @ts-check
// Browser client for the agent gateway HTTP/SSE API (docs/api.md, docs/client.md).
//
// One live connection per BROWSER, whatever the number of tabs: a hub (gateway-hub.js)
// owns the single EventSource of GET /v1/mux/{mux_id}/events and the folded state of
// every session any tab views. The hub runs in a SharedWorker (gateway-worker.js) or,
// where SharedWorker is missing, in the tab holding the 'gateway-leader' Web Lock, which
// relays to the other tabs over a BroadcastChannel. A GatewayClient is one tab's handle.
//
// Nothing in this module touches window, document, EventSource or storage at import
// time, so the pure fold (applyEvent) can be imported and tested in Node.

import { applyEvent, laterOffset, normalizeState, offsetAfter, parseOffset } from './gateway-fold.js';
import { GatewayHub, readResponse, requestInit, withToken } from './gateway-hub.js';

export {
  EVENT_TYPES, applyEvent, emptyState, laterOffset, offsetAfter, parseOffset,
} from './gateway-fold.js';
export { GatewayHub } from './gateway-hub.js';

/**
 * @typedef {import('./gateway-fold.js').SessionState} SessionState
 * @typedef {import('./gateway-fold.js').Envelope} Envelope
 * @typedef {'live'|'reconnecting'|'offline'|'superseded'} Status
 * @typedef {'shared-worker'|'broadcast-leader'|'broadcast-follower'} Transport
 * @typedef {{status: number, code: string, message: string}} AuthProblem
 * @typedef {import('./gateway-http.js').GatewayResponse} GatewayResponse
 * @typedef {{sessionId: string, message: string, fatal: boolean, status: number|null,
 *   code: string|null}} SessionError the `error` event
 * @typedef {{ok: boolean, status?: number, code?: string, message?: string,
 *   [field: string]: any}} CommandResult `{ok: true, ...body}`, or `{ok: false, status,
 *   code, message}` on 404 and 409
 * @typedef {string|(() => string|null|Promise<string|null>)} AccessToken
 * @typedef {'event'|'state'|'status'|'activity'|'read'|'transport'|'mux'|'error'|'auth'} ListenerName
 * @typedef {{session_id: string, status: string, title: string|null, run_id: string|null,
 *   last_offset: string, updated_ms: number}} SessionInfo a row of GET /v1/sessions
 * @typedef {{t: string, [field: string]: any}} HubMessage a message of the hub protocol
 *   (gateway-hub-relay.js)
 * @typedef {{tab: string, lock: string|null, releaseLock: (() => void)|null,
 *   send: (msg: HubMessage) => void, teardown: () => void, welcomed?: boolean,
 *   helloSent?: boolean, hub?: GatewayHub|null, resign?: (() => void)|null}} Conn
 *   this tab's link to the hub: a SharedWorker port, or a BroadcastChannel (whose
 *   leader tab runs the hub itself, `hub`)
 * @typedef {{getItem(key: string): string|null, setItem(key: string, value: string): void,
 *   removeItem(key: string): void}} MuxStorage
 */

/** Error for gateway answers the caller is not expected to handle inline. */
export class GatewayError extends Error {
  /** @param {{status: number, code: string|null, message?: string}} info */
  constructor({ status, code, message }) {
    super(message || `${code} (HTTP ${status})`);
    this.name = 'GatewayError';
    this.status = status;
    this.code = code;
  }
}

const MUX_KEY = 'gw.mux';
const LEADER_LOCK = 'gateway-leader';
const enc = encodeURIComponent;

/** @returns {MuxStorage} */
function memoryStorage() {
  /** @type {Map<string, string>} */
  const map = new Map();
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => { map.set(k, String(v)); },
    removeItem: (k) => { map.delete(k); },
  };
}

/** @returns {MuxStorage} */
function defaultStorage() {
  // localStorage: the mux id belongs to the browser, not to one tab. It throws when
  // storage is disabled; then each page load gets its own mux.
  try {
    const s = globalThis.localStorage;
    if (s) {
      s.getItem(MUX_KEY);
      return s;
    }
  } catch { /* fall through */ }
  return memoryStorage();
}

/** @returns {string} */
function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * One tab's handle on the browser's shared gateway connection.
 *
 * Events (`on(name, fn)`, returns an unsubscribe function):
 * - `state` (sessionId, state): the viewed session's state changed (first load,
 *   every event, reset)
 * - `event` (sessionId, envelope, state): one live event was folded in
 * - `status` (status): 'live' | 'reconnecting' | 'offline' | 'superseded'
 * - `activity` (entry): an activity-feed entry of any session
 *   `{session_id, status?, title?, run_id?, last_offset?, ts}`
 * - `read` (): committed / processed offsets moved; recompute unread markers
 * - `transport` (transport): 'shared-worker' | 'broadcast-leader' | 'broadcast-follower'
 * - `mux` (muxId): the browser's mux id changed
 * - `error` ({sessionId, message, fatal, status, code}): loading a session keeps failing
 *   (the hub retries unless `fatal`, e.g. an invalid session id, or 403 forbidden; a
 *   fatal error settles view() and watch() of that session with null)
 * - `auth` (problem | null): the gateway refuses the browser's token even after asking for
 *   a fresh one, `{status: 401, code: 'token_expired'|'invalid_token'|'unauthorized',
 *   message}` (or 403 `forbidden` for a token without `view`); null once accepted again.
 *   The hub keeps retrying with backoff.
 */
export class GatewayClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] prefix of API paths, default same origin
   * @param {'auto'|'shared-worker'|'broadcast'} [options.transport] default 'auto':
   *   SharedWorker where available, else Web Locks + BroadcastChannel
   * @param {string|URL} [options.workerUrl] default gateway-worker.js next to this module
   * @param {typeof fetch} [options.fetch]
   * @param {typeof EventSource} [options.EventSource] used when this tab leads
   * @param {MuxStorage} [options.storage] where the mux id lives, default localStorage
   * @param {number} [options.ackIntervalMs] default 1000 (hub side)
   * @param {number} [options.maxBackoffMs] default 10000 (hub side)
   * @param {number} [options.unsubscribeGraceMs] default 1500 (hub side): how long a
   *   session no tab views stays subscribed; 0 unsubscribes at once
   *   (hub options apply when this tab's hello creates the hub)
   * @param {AccessToken} [options.accessToken] the JWT
   *   the gateway requires (when it runs with a token key). A function is called before
   *   this tab connects to the hub and before each request it makes, and whenever the hub
   *   asks for a fresh token (before it reconnects, when the token is about to expire,
   *   on a 401); the hub, shared by every tab of the browser, uses the latest token any
   *   tab gave it.
   */
  constructor(options = {}) {
    this.baseUrl = (options.baseUrl ?? '').replace(/\/+$/, '');
    this._mode = options.transport ?? 'auto';
    this._workerUrl = options.workerUrl ?? new URL('./gateway-worker.js', import.meta.url);
    /** @type {typeof fetch} */
    this._fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this._EventSource = options.EventSource ?? globalThis.EventSource;
    this._storage = options.storage ?? defaultStorage();
    this._ackIntervalMs = options.ackIntervalMs ?? 1000;
    this._maxBackoffMs = options.maxBackoffMs ?? 10000;
    this._graceMs = options.unsubscribeGraceMs;
    /** @type {AccessToken|null} */
    this._accessToken = options.accessToken ?? null;
    /** @type {string|null} what the option last yielded (a beacon needs it synchronously) */
    this._lastToken = null;
    /** @type {string|null} the last token posted to the hub */
    this._sentToken = null;

    /** @type {Transport|null} */
    this.transport = null;
    /** @type {Status} */
    this.status = 'offline';
    /** @type {AuthProblem|null} see the `auth` event */
    this.authError = null;
    /**
     * Read by tests: EventSources open in THIS tab (1 only in the broadcast leader).
     * @type {{openEventSources: number, hub: GatewayHub|null}}
     */
    this.debug = { openEventSources: 0, hub: null };

    /** @type {Record<ListenerName, Set<Function>>} */
    this._listeners = {
      event: new Set(), state: new Set(), status: new Set(), activity: new Set(),
      read: new Set(), transport: new Set(), mux: new Set(), error: new Set(), auth: new Set(),
    };
    /** @type {Set<string>} sessions this tab views */
    this._views = new Set();
    /** @type {string|null} the one passed to view() */
    this._viewing = null;
    /** @type {Map<string, {state: SessionState, offset: string, syncing: boolean}>} */
    this._sessions = new Map();
    /** @type {Map<string, ((state: SessionState|null) => void)[]>} sid -> who waits for its first state */
    this._waiters = new Map();
    /** @type {Map<string, SessionError>} viewed sessions the hub gave up on (fatal error) */
    this._fatal = new Map();
    /** @type {Map<string, string>} this mux's committed offsets */
    this._committed = new Map();
    /** @type {Map<string, string>} how far the hub processed sessions it holds */
    this._held = new Map();
    /** @type {Map<string, string>} offsets this tab had when it stopped viewing a session */
    this._localRead = new Map();
    /** @type {Map<string, string|null>} last_offset at first sight, for sessions the mux never saw */
    this._baseline = new Map();
    /** @type {Set<string>} sessions some tab of this browser views */
    this._subs = new Set();
    /** @type {Map<string, (data: object|null) => void>} */
    this._describeWaiters = new Map();
    this._closed = false;
    this._gen = 0;
    /** @type {Conn|null} */
    this._conn = null;

    this._onPageHide = this._onPageHide.bind(this);
    this._onPageShow = this._onPageShow.bind(this);
    this._win = typeof window !== 'undefined' ? window : null;
    if (this._win) {
      this._win.addEventListener('pagehide', this._onPageHide);
      this._win.addEventListener('pageshow', this._onPageShow);
    }
    this._connect();
  }

  // ---- listeners --------------------------------------------------------------

  /**
   * @param {ListenerName} name
   * @param {Function} fn
   * @returns {() => void} unsubscribe
   */
  on(name, fn) {
    const set = this._listeners[name];
    if (!set) throw new Error(`unknown listener type: ${name}`);
    set.add(fn);
    return () => set.delete(fn);
  }

  /** @param {ListenerName} name @param {Function} fn */
  off(name, fn) {
    this._listeners[name]?.delete(fn);
  }

  /**
   * @param {ListenerName} name
   * @param {...unknown} args
   */
  _emit(name, ...args) {
    for (const fn of [...this._listeners[name]]) {
      try { fn(...args); } catch (err) { console.error(`gateway ${name} listener failed`, err); }
    }
  }

  /** @param {Status} status */
  _setStatus(status) {
    if (!status || status === this.status) return;
    this.status = status;
    this._emit('status', status);
  }

  /** @param {Transport} transport */
  _setTransport(transport) {
    if (transport === this.transport) return;
    this.transport = transport;
    this._emit('transport', transport);
  }

  // ---- state accessors --------------------------------------------------------

  /** The session passed to the last view(), or null. */
  get currentSession() {
    return this._viewing;
  }

  /** This browser's mux id (localStorage `gw.mux`), or null before the first one. */
  get muxId() {
    try { return this._storage.getItem(MUX_KEY); } catch { return null; }
  }

  /**
   * State of a session this tab views, or null (not viewed, or still loading).
   * @param {string} sessionId
   * @returns {SessionState|null}
   */
  getState(sessionId) {
    return this._sessions.get(sessionId)?.state ?? null;
  }

  /**
   * Offset of the last event folded into the viewed session's state, or null.
   * @param {string} sessionId
   * @returns {string|null}
   */
  getOffset(sessionId) {
    return this._sessions.get(sessionId)?.offset ?? null;
  }

  /**
   * How far this device has read a session: the later of the mux's committed offset,
   * what the hub processed, and what this tab showed. undefined if never seen.
   * @param {string} sessionId
   * @returns {string|null|undefined}
   */
  getReadOffset(sessionId) {
    let read;
    for (const m of [this._committed, this._held, this._localRead]) {
      if (m.has(sessionId)) read = laterOffset(read ?? null, m.get(sessionId));
    }
    const viewed = this._sessions.get(sessionId);
    if (viewed) read = laterOffset(read ?? null, viewed.offset);
    return read;
  }

  /**
   * Unread marker for a sidebar row: the session's last_offset (from listSessions()
   * or an activity entry) is beyond what this device has read. A session viewed by
   * any tab of this browser is never unread. For a session this device never opened,
   * the last_offset seen when it first appeared is the baseline: only activity after
   * that marks it unread.
   * @param {{session_id: string, last_offset?: string|null}} session
   * @returns {boolean}
   */
  isUnread(session) {
    const sid = session && session.session_id;
    if (!sid || !session.last_offset) return false;
    if (this._views.has(sid) || this._subs.has(sid)) return false;
    let read = this.getReadOffset(sid);
    if (read === undefined) {
      if (!this._baseline.has(sid)) this._baseline.set(sid, null);
      read = this._baseline.get(sid);
    }
    return offsetAfter(session.last_offset, read);
  }

  // ---- access token -----------------------------------------------------------

  /**
   * The current token: the option's string, or what its function returns now. A function
   * that throws leaves the last token in use. A token that changed is posted to the hub.
   * @returns {Promise<string|null>}
   */
  async _getToken() {
    const opt = this._accessToken;
    let token = null;
    if (typeof opt === 'function') {
      try {
        token = await opt();
      } catch (err) {
        console.warn('gateway: the accessToken function failed', err);
        token = this._lastToken;
      }
    } else {
      token = opt;
    }
    token = typeof token === 'string' && token ? token : null;
    this._lastToken = token;
    if (token && token !== this._sentToken && this._conn?.helloSent && !this._closed) {
      this._sentToken = token;
      this._send({ t: 'token', token, refreshable: typeof this._accessToken === 'function' });
    }
    return token;
  }

  /**
   * Replace the `accessToken` option (a string or a function) and hand the new token to
   * the hub at once, e.g. when the page's login refreshed it.
   * @param {AccessToken|null} accessToken
   * @returns {Promise<string|null>} the token now in use
   */
  setAccessToken(accessToken) {
    this._accessToken = accessToken ?? null;
    return this._getToken();
  }

  // ---- transport --------------------------------------------------------------

  _connect() {
    const gen = ++this._gen;
    const tab = randomId();
    const sharedOk = typeof globalThis.SharedWorker === 'function';
    if (this._mode === 'shared-worker' || (this._mode === 'auto' && sharedOk)) {
      if (sharedOk && this._connectWorker(gen, tab)) return;
    }
    this._connectBroadcast(gen, tab);
  }

  /**
   * Hold a Web Lock named after the tab while it lives; the hub watches it.
   * @param {Conn} conn
   * @returns {Promise<string|null>} the lock's name (null without Web Locks)
   */
  async _holdTabLock(conn) {
    const locks = globalThis.navigator?.locks;
    if (!locks) return null;
    const name = `gateway-tab-${conn.tab}`;
    await new Promise((acquired) => {
      locks.request(name, () => {
        acquired();
        return /** @type {Promise<void>} */ (new Promise((release) => { conn.releaseLock = release; }));
      }).catch(() => acquired());
    });
    return name;
  }

  /**
   * @param {number} gen
   * @param {string} tab
   * @returns {boolean} false when no SharedWorker could be created
   */
  _connectWorker(gen, tab) {
    let worker;
    try {
      worker = new SharedWorker(this._workerUrl, { type: 'module', name: `gateway-hub ${this.baseUrl}` });
    } catch (err) {
      console.warn('gateway: SharedWorker unavailable, using the broadcast fallback', err);
      return false;
    }
    const port = worker.port;
    /** @type {Conn} */
    const conn = {
      tab,
      welcomed: false,
      lock: null,
      releaseLock: null,
      send: (msg) => port.postMessage(msg),
      teardown: () => {
        port.close();
        if (conn.releaseLock) conn.releaseLock();
      },
    };
    this._conn = conn;
    this._setTransport('shared-worker');
    worker.addEventListener('error', (ev) => {
      // The worker script failed to load or start: fall back to the in-page hub.
      if (conn.welcomed || gen !== this._gen || this._closed) return;
      console.warn('gateway: SharedWorker failed, using the broadcast fallback', ev.message || ev);
      conn.teardown();
      this._gen += 1;
      this._connectBroadcast(this._gen, randomId());
    });
    port.addEventListener('message', (ev) => {
      if (gen !== this._gen) return;
      if (ev.data && ev.data.t === 'welcome') conn.welcomed = true;
      this._onHubMessage(ev.data);
    });
    port.start();
    this._holdTabLock(conn).then((lock) => {
      if (gen !== this._gen) { if (conn.releaseLock) conn.releaseLock(); return; }
      conn.lock = lock;
      this._hello();
    });
    return true;
  }

  /**
   * @param {number} gen
   * @param {string} tab
   */
  _connectBroadcast(gen, tab) {
    const channel = typeof BroadcastChannel === 'function'
      ? new BroadcastChannel(`gateway-hub ${this.baseUrl}`)
      : null;
    const locks = globalThis.navigator?.locks ?? null;
    const leaderAbort = typeof AbortController === 'function' ? new AbortController() : null;
    /** @type {Conn} */
    const conn = {
      tab,
      lock: null,
      releaseLock: null,
      hub: null,
      resign: null,
      send: (msg) => {
        if (conn.hub) queueMicrotask(() => { if (conn.hub) conn.hub.handle(msg); });
        else if (channel) channel.postMessage({ k: 'hub', msg });
      },
      teardown: () => {
        if (leaderAbort) leaderAbort.abort();
        if (conn.hub) {
          conn.hub.close();
          conn.hub = null;
          this.debug.hub = null;
          this.debug.openEventSources = 0;
        }
        if (conn.resign) conn.resign(); // frees 'gateway-leader': another tab takes over
        if (channel) channel.close();
        if (conn.releaseLock) conn.releaseLock();
      },
    };
    this._conn = conn;
    this._setTransport('broadcast-follower');

    if (channel) {
      channel.onmessage = (ev) => {
        const data = ev.data;
        if (gen !== this._gen || !data || typeof data !== 'object') return;
        if (data.k === 'hub') {
          if (conn.hub) conn.hub.handle(data.msg);
        } else if (data.k === 'tabs') {
          if (!conn.hub && (data.to === '*' || (Array.isArray(data.to) && data.to.includes(tab)))) {
            this._onHubMessage(data.msg);
          }
        } else if (data.k === 'leader') {
          // A new leader has an empty hub: tell it what we view and what we hold.
          if (!conn.hub) this._hello();
        }
      };
    }

    const lead = () => {
      if (gen !== this._gen || this._closed) return undefined;
      const hub = new GatewayHub({
        transport: 'broadcast-leader',
        baseUrl: this.baseUrl,
        fetch: this._fetch,
        EventSource: this._EventSource,
        ackIntervalMs: this._ackIntervalMs,
        maxBackoffMs: this._maxBackoffMs,
        unsubscribeGraceMs: this._graceMs,
        send: (tabs, msg) => {
          if (tabs === '*' || tabs.includes(tab)) {
            // Asynchronously, like a real port: no re-entrancy into the hub.
            queueMicrotask(() => { if (gen === this._gen) this._onHubMessage(msg); });
          }
          const to = tabs === '*' ? '*' : tabs.filter((t) => t !== tab);
          if (channel && (to === '*' || to.length)) channel.postMessage({ k: 'tabs', to, msg });
        },
        onStream: (es) => { this.debug.openEventSources = es ? 1 : 0; },
      });
      conn.hub = hub;
      this.debug.hub = hub;
      this._setTransport('broadcast-leader');
      if (channel) channel.postMessage({ k: 'leader', tab });
      this._hello();
      return /** @type {Promise<void>} */ (new Promise((resolve) => { conn.resign = resolve; }));
    };

    this._holdTabLock(conn).then((lock) => {
      if (gen !== this._gen) { if (conn.releaseLock) conn.releaseLock(); return; }
      conn.lock = lock;
      this._hello(); // to the current leader, if there is one
      if (locks && channel) {
        locks.request(LEADER_LOCK, leaderAbort ? { signal: leaderAbort.signal } : {}, lead)
          .catch(() => { /* aborted: this tab left before leading */ });
      } else {
        lead(); // no Web Locks or BroadcastChannel: this tab is its own hub
      }
    });
  }

  async _hello() {
    const conn = this._conn;
    if (!conn || this._closed) return;
    // The token first: the hub makes its first requests as soon as a hello arrives.
    const token = await this._getToken();
    if (conn !== this._conn || this._closed) return; // replaced meanwhile: it says hello itself
    /** @type {Record<string, {state: SessionState, offset: string}>} */
    const have = {};
    for (const sid of this._views) {
      const s = this._sessions.get(sid);
      if (s && s.state) have[sid] = { state: s.state, offset: s.offset };
    }
    conn.send({
      t: 'hello',
      tab: conn.tab,
      baseUrl: this.baseUrl,
      hubOptions: {
        ackIntervalMs: this._ackIntervalMs,
        maxBackoffMs: this._maxBackoffMs,
        unsubscribeGraceMs: this._graceMs,
      },
      mux: this.muxId,
      views: [...this._views],
      have,
      lock: conn.hub ? null : conn.lock,
      token,
      refreshable: typeof this._accessToken === 'function',
    });
    this._sentToken = token;
    conn.helloSent = true;
  }

  /** @param {HubMessage} msg */
  _send(msg) {
    const conn = this._conn;
    if (conn) conn.send({ ...msg, tab: conn.tab });
  }

  _disconnect() {
    const conn = this._conn;
    this._conn = null;
    this._gen += 1;
    if (!conn) return;
    if (!conn.hub) {
      try { conn.send({ t: 'bye', tab: conn.tab }); } catch { /* port gone */ }
    }
    conn.teardown();
  }

  // ---- messages from the hub --------------------------------------------------

  /** @param {HubMessage} msg */
  _onHubMessage(msg) {
    if (!msg || typeof msg !== 'object' || this._closed) return;
    switch (msg.t) {
      case 'welcome':
        if (msg.mux) this._storeMux(msg.mux);
        this._mergeRead(this._committed, msg.committed);
        this._subs = new Set(msg.subs || []);
        this._setStatus(msg.status);
        this._setAuthError(msg.auth ?? null);
        this._emit('read');
        break;
      case 'token?':
        // The hub needs a fresh token: answer even when it did not change, so that the
        // hub stops waiting.
        this._getToken().then((token) => {
          if (!this._closed) {
            this._sentToken = token;
            this._send({ t: 'token', token, refreshable: typeof this._accessToken === 'function' });
          }
        });
        break;
      case 'auth':
        this._setAuthError(msg.problem ?? null);
        break;
      case 'mux':
        this._committed.clear();
        this._storeMux(msg.mux);
        this._emit('read');
        break;
      case 'status':
        this._setStatus(msg.status);
        break;
      case 'state': this._onState(msg); break;
      case 'event': this._onEvent(msg); break;
      case 'activity':
        if (msg.entry) this._emit('activity', msg.entry);
        break;
      case 'read':
        this._mergeRead(this._committed, msg.offsets);
        this._emit('read');
        break;
      case 'subs':
        this._subs = new Set(msg.sids || []);
        this._mergeRead(this._held, msg.held);
        this._emit('read');
        break;
      case 'error': {
        /** @type {SessionError} */
        const error = {
          sessionId: msg.sid,
          message: msg.message,
          fatal: Boolean(msg.fatal),
          status: msg.status ?? null,
          code: msg.code ?? null,
        };
        if (error.fatal && this._views.has(msg.sid)) {
          // The hub gave up on this session (400 invalid_id, 403 forbidden): whoever
          // waits in view() or watch() gets null rather than waiting forever.
          this._fatal.set(msg.sid, error);
          this._settle(msg.sid, null);
        }
        this._emit('error', error);
        break;
      }
      case 'described': {
        const resolve = this._describeWaiters.get(msg.id);
        this._describeWaiters.delete(msg.id);
        if (resolve) resolve(msg.data);
        break;
      }
      default:
        break;
    }
  }

  /** @param {AuthProblem|null} problem */
  _setAuthError(problem) {
    const prev = this.authError;
    if (!problem && !prev) return;
    if (problem && prev && problem.code === prev.code && problem.status === prev.status) return;
    this.authError = problem;
    this._emit('auth', problem);
  }

  /**
   * @param {Map<string, string>} map
   * @param {unknown} offsets `{sid: offset}`
   */
  _mergeRead(map, offsets) {
    if (!offsets || typeof offsets !== 'object') return;
    for (const [sid, offset] of Object.entries(offsets)) {
      if (typeof offset === 'string') map.set(sid, laterOffset(map.get(sid) ?? null, offset));
    }
  }

  /** @param {unknown} mux */
  _storeMux(mux) {
    if (typeof mux !== 'string' || !mux || mux === this.muxId) return;
    try { this._storage.setItem(MUX_KEY, mux); } catch { /* quota or disabled */ }
    this._emit('mux', mux);
  }

  /** @param {HubMessage} msg `{t: 'state', sid, state, offset}` */
  _onState({ sid, state, offset }) {
    if (!this._views.has(sid)) return;
    const st = normalizeState(sid, state);
    this._sessions.set(sid, { state: st, offset, syncing: false });
    this._fatal.delete(sid);
    this._emit('state', sid, st);
    this._settle(sid, st);
  }

  /**
   * Resolve whoever waits for the session's first state (view(), watch()).
   * @param {string} sid
   * @param {SessionState|null} state
   */
  _settle(sid, state) {
    const waiters = this._waiters.get(sid);
    if (waiters) {
      this._waiters.delete(sid);
      for (const resolve of waiters) resolve(state);
    }
  }

  /** @param {HubMessage} msg `{t: 'event', sid, env}` */
  _onEvent({ sid, env }) {
    const s = this._sessions.get(sid);
    if (!s || !env) return;
    const off = parseOffset(env.offset);
    const cur = parseOffset(s.offset);
    if (!off) return;
    if (cur && off.epoch === cur.epoch && off.seq <= cur.seq) return; // already folded
    if (!cur || off.epoch !== cur.epoch || off.seq !== cur.seq + 1) {
      // Cannot happen with an in-order transport; ask the hub for its state rather
      // than show a wrong transcript.
      if (!s.syncing) {
        s.syncing = true;
        this._send({ t: 'sync', sid });
      }
      return;
    }
    s.state = applyEvent(s.state, env);
    s.offset = env.offset;
    this._emit('event', sid, env, s.state);
    this._emit('state', sid, s.state);
  }

  // ---- viewing ----------------------------------------------------------------

  /**
   * Make `sessionId` the one session this tab views (null: none). Changes the browser's
   * subscriptions, never its connection. Resolves with the session's state once the hub
   * has it (at once when another tab already views it), or with null when the session
   * stops being viewed first, or when the hub gives up on it: a fatal `error` event
   * (400 invalid_id, 403 forbidden) carries the reason. It does not reject (only when the
   * client is closed); while loading fails with other errors, the hub retries and the
   * promise stays pending.
   * @param {string|null} sessionId
   * @returns {Promise<SessionState|null>}
   */
  view(sessionId) {
    if (this._closed) return Promise.reject(new Error('GatewayClient is closed'));
    this._viewing = sessionId || null;
    return this._setViews(sessionId ? [sessionId] : [], sessionId);
  }

  /**
   * Also view `sessionId` (for UIs showing several sessions at once). Settles like view().
   * @param {string} sessionId
   * @returns {Promise<SessionState|null>}
   */
  watch(sessionId) {
    if (this._closed) return Promise.reject(new Error('GatewayClient is closed'));
    return this._setViews([...this._views, sessionId], sessionId);
  }

  /** Stop viewing `sessionId`. @param {string} sessionId */
  unwatch(sessionId) {
    if (this._viewing === sessionId) this._viewing = null;
    this._setViews([...this._views].filter((s) => s !== sessionId), null);
  }

  /** Sessions this tab views. @returns {string[]} */
  get views() {
    return [...this._views];
  }

  /**
   * @param {string[]} list the sessions this tab views from now on
   * @param {string|null} waitFor resolve with this session's state once the hub has it
   * @returns {Promise<SessionState|null>}
   */
  _setViews(list, waitFor) {
    const next = new Set(list.filter((s) => typeof s === 'string' && s));
    for (const sid of this._views) {
      if (next.has(sid)) continue;
      const s = this._sessions.get(sid);
      if (s) this._localRead.set(sid, laterOffset(this._localRead.get(sid) ?? null, s.offset));
      this._sessions.delete(sid);
      this._fatal.delete(sid);
      this._settle(sid, null);
    }
    const changed = next.size !== this._views.size || [...next].some((s) => !this._views.has(s));
    this._views = next;
    if (changed) this._send({ t: 'views', sids: [...next] });
    this._emit('read');
    if (!waitFor) return Promise.resolve(null);
    const have = this._sessions.get(waitFor);
    if (have) return Promise.resolve(have.state);
    // The hub gave up on it already (fatal error) and will not send its state.
    if (this._fatal.has(waitFor)) return Promise.resolve(null);
    return new Promise((resolve) => {
      const list2 = this._waiters.get(waitFor) || [];
      list2.push(resolve);
      this._waiters.set(waitFor, list2);
    });
  }

  /**
   * Debugging: the hub's view of things (mux, status, tabs, sessions with offsets, recent
   * requests), wherever the hub runs. Resolves null if no hub answers within 2 s.
   * @returns {Promise<object|null>}
   */
  describeHub() {
    const id = randomId();
    return new Promise((resolve) => {
      this._describeWaiters.set(id, resolve);
      this._send({ t: 'describe', id });
      setTimeout(() => {
        if (this._describeWaiters.delete(id)) resolve(null);
      }, 2000);
    });
  }

  /** Ask the hub to reconnect now (after 'superseded' or while 'offline'). */
  reconnect() {
    if (this._closed) return;
    this._send({ t: 'reconnect' });
  }

  // ---- HTTP -------------------------------------------------------------------

  /** @param {string} path */
  _url(path) {
    return this.baseUrl + path;
  }

  /**
   * A request with the current token; on a 401, once more with a fresh one.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<GatewayResponse>}
   */
  async _request(method, path, body) {
    const token = await this._getToken();
    const r = await readResponse(await this._fetch(this._url(path), requestInit(method, body, token)));
    if (r.status !== 401 || typeof this._accessToken !== 'function') return r;
    const fresh = await this._getToken();
    if (!fresh || fresh === token) return r;
    return readResponse(await this._fetch(this._url(path), requestInit(method, body, fresh)));
  }

  /**
   * The answer's data; any failure throws GatewayError.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async _call(method, path, body) {
    const r = await this._request(method, path, body);
    if (!r.ok) throw new GatewayError(r);
    return r.data;
  }

  // Commands report conflicts (409) and vanished targets (404) as values: they are
  // normal races between tabs, devices, workers and the user, not bugs.
  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<CommandResult>}
   */
  async _command(method, path, body) {
    const r = await this._request(method, path, body);
    if (r.ok) return { ok: true, ...(r.data || {}) };
    if (r.status === 409 || r.status === 404) {
      return { ok: false, status: r.status, code: r.code, message: r.message };
    }
    throw new GatewayError(r);
  }

  /**
   * Create a session (POST /v1/sessions).
   * @param {string} [sessionId] id to create; the gateway picks one when omitted
   * @returns {Promise<string>} session_id
   */
  async createSession(sessionId) {
    const data = await this._call('POST', '/v1/sessions', sessionId ? { session_id: sessionId } : {});
    if (data && data.session_id && !this._baseline.has(data.session_id)) {
      this._baseline.set(data.session_id, data.offset ?? null);
    }
    return data.session_id;
  }

  /**
   * Recently active sessions (GET /v1/sessions), most recent first.
   * @returns {Promise<SessionInfo[]>}
   */
  async listSessions() {
    const data = await this._call('GET', '/v1/sessions');
    /** @type {SessionInfo[]} */
    const sessions = (data && data.sessions) || [];
    for (const s of sessions) {
      if (!this._baseline.has(s.session_id)) this._baseline.set(s.session_id, s.last_offset ?? null);
      // A viewed session whose log is ahead of what we hold: fine if its events are on
      // their way, a silently stalled stream if they never come. Let the hub watch it.
      const held = this._sessions.get(s.session_id);
      if (held && offsetAfter(s.last_offset, held.offset)) this._send({ t: 'expect', sid: s.session_id });
    }
    return sessions;
  }

  /**
   * One session's metadata (GET /v1/sessions/{id}); null when it does not exist.
   * @param {string} sessionId
   * @returns {Promise<any>}
   */
  async getSession(sessionId) {
    const r = await this._request('GET', `/v1/sessions/${enc(sessionId)}`);
    if (r.status === 404) return null;
    if (!r.ok) throw new GatewayError(r);
    return r.data;
  }

  /**
   * Ask a worker to start a run.
   * @param {string} sessionId
   * @param {string} input
   * @returns {Promise<CommandResult>} `{ok: true, run_id}` or `{ok: false, status, code, message}`;
   *   `code` is 'run_active' while another run is running
   */
  async startRun(sessionId, input) {
    const r = await this._command('POST', `/v1/sessions/${enc(sessionId)}/runs`, { input });
    if (r.ok) this._send({ t: 'expect', sid: sessionId });
    return r;
  }

  /**
   * Request cancellation of a run.
   * @param {string} sessionId
   * @param {string} runId
   * @returns {Promise<CommandResult>} `{ok: true}` or `{ok: false, status, code, message}`
   */
  cancel(sessionId, runId) {
    return this._command('POST', `/v1/sessions/${enc(sessionId)}/runs/${enc(runId)}/cancel`, {});
  }

  /**
   * Answer an approval request.
   * @param {string} sessionId
   * @param {string} approvalId
   * @param {'approve'|'deny'} decision
   * @returns {Promise<CommandResult>} `{ok: true, offset}` or `{ok: false, status, code, message}`;
   *   `code` is 'approval_already_resolved' or 'approval_not_found' on failure
   */
  answerApproval(sessionId, approvalId, decision) {
    return this._command('POST', `/v1/sessions/${enc(sessionId)}/approvals/${enc(approvalId)}`, { decision });
  }

  // ---- page lifecycle ---------------------------------------------------------

  /** Ack with a beacon what this tab (or, if it leads, the whole hub) processed. */
  _beacon() {
    const nav = this._win && this._win.navigator;
    if (!nav || typeof nav.sendBeacon !== 'function') return;
    const conn = this._conn;
    let url = null;
    let body = null;
    if (conn && conn.hub) {
      const b = conn.hub.takeBeacon();
      if (b) ({ url, body } = b);
    } else {
      const mux = this.muxId;
      /** @type {Record<string, string>} */
      const offsets = {};
      for (const [sid, s] of this._sessions) {
        if (s.offset && offsetAfter(s.offset, this._committed.get(sid) ?? null)) offsets[sid] = s.offset;
      }
      if (mux && Object.keys(offsets).length) {
        // sendBeacon cannot set headers: the token goes in the query (access_token).
        url = withToken(this._url(`/v1/mux/${enc(mux)}/ack`), this._lastToken);
        body = JSON.stringify({ offsets });
      }
    }
    // text/plain keeps the beacon a CORS-simple request; the gateway accepts it.
    if (url) {
      try { nav.sendBeacon(url, new Blob([body], { type: 'text/plain' })); } catch { /* best effort */ }
    }
  }

  _onPageHide() {
    if (this._closed) return;
    this._beacon();
    // Leave the hub (a leader resigns, closing the EventSource that would keep the
    // page out of the back/forward cache); pageshow joins again.
    this._disconnect();
    this._setStatus('offline');
  }

  /** @param {PageTransitionEvent} ev */
  _onPageShow(ev) {
    if (!ev.persisted || this._closed || this._conn) return;
    // Back from the BFCache: a fresh hello makes the hub send the current state of every
    // session we view (a hub that lost it adopts ours and resumes from its offset).
    this._connect();
  }

  /**
   * Ack what this tab processed, leave the hub and stop. The client cannot be used
   * afterwards. The browser's connection stays up while other tabs use it.
   */
  close() {
    if (this._closed) return;
    this._beacon();
    this._disconnect();
    this._closed = true;
    if (this._win) {
      this._win.removeEventListener('pagehide', this._onPageHide);
      this._win.removeEventListener('pageshow', this._onPageShow);
    }
    this.status = 'offline';
    this._emit('status', 'offline');
  }
}
