// @ts-check
// The hub's link to the gateway (one part of GatewayHub, see gateway-hub.js). Owns:
// - the browser's ONE EventSource, on GET /v1/mux/{id}/events, and its reconnects with
//   backoff (and the 'superseded' ping-pong guard);
// - the mux it belongs to: validated at start (GET /v1/mux/{id}), created, renewed on
//   404 mux_not_found;
// - the access token: the latest one a tab handed over, refreshed (by asking the tabs)
//   before a reconnect, before it expires and on a 401;
// - every HTTP request of the hub, sent with that token.
// Frames go to the state sync (gateway-hub-sync.js); what tabs must hear goes through the
// relay (gateway-hub-relay.js). No DOM and no storage here.

import { HttpError, parseFrame, readResponse, requestInit, tokenClaims, withToken } from './gateway-http.js';

/**
 * @typedef {import('./gateway-http.js').GatewayResponse} GatewayResponse
 * @typedef {{status: number, code: string, message: string}} AuthProblem
 * @typedef {import('./gateway-hub.js').GatewayHub} GatewayHub
 * @typedef {import('./gateway-hub.js').HubOptions} HubOptions
 */

const ES_CONNECTING = 0;
const ES_CLOSED = 2;
const enc = encodeURIComponent;

/** How long the hub waits for a tab to answer {t:'token?'}. */
const TOKEN_WAIT_MS = 3000;
/** A token expiring within this long is refreshed before the next request or connect. */
const TOKEN_EARLY_MS = 30000;

export class MuxTransport {
  /**
   * @param {GatewayHub} hub
   * @param {HubOptions} opts
   */
  constructor(hub, opts) {
    this.hub = hub;
    this.baseUrl = (opts.baseUrl ?? '').replace(/\/+$/, '');
    /** @type {typeof fetch} */
    this._fetch = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this._EventSource = opts.EventSource ?? globalThis.EventSource;
    this._maxBackoffMs = opts.maxBackoffMs ?? 10000;
    this._onStream = opts.onStream ?? (() => {});

    /** @type {string|null} */
    this.muxId = null;
    /** @type {'live'|'reconnecting'|'offline'|'superseded'} */
    this.status = 'offline';
    this._started = false;
    /** @type {Promise<string>|null} the mux id once validated or created */
    this._ready = null;
    /** @type {EventSource|null} */
    this._es = null;
    this._esGen = 0;
    /** @type {ReturnType<typeof setTimeout>|null} */
    this._reopenTimer = null;
    this._backoff = 0;
    /** @type {number[]} timestamps of `event: close` superseded */
    this._superseded = [];

    /** The latest access token a tab gave us (null: none; the gateway may not need one). */
    this.token = typeof opts.accessToken === 'string' && opts.accessToken ? opts.accessToken : null;
    /** @type {Set<() => void>} resolve functions of a pending {t:'token?'} */
    this._tokenWaiters = new Set();
    /** @type {Promise<void>|null} while tabs are asked for a fresh token */
    this._tokenAsk = null;
    this._staleAsks = 0; // asks in a row that brought no new token after a 401
    this._nextStaleAsk = 0; // no new ask for the same refused token before then
    this._nextEarlyAsk = 0;
    this._askedAt = 0; // when tabs last answered {t:'token?'} (or the wait timed out)
    /** @type {Set<() => void>} end the backoff of the mux loops early (a new token came) */
    this._wakers = new Set();
    /** @type {AuthProblem|null} while the gateway refuses our token, else null */
    this.authProblem = null;
  }

  /** The mux id once validated or created (a renewal replaces it). */
  get ready() {
    return this._ready;
  }

  /** Whether the EventSource is open and live (the stall watchdog only runs then). */
  get live() {
    return Boolean(this._es) && this.status === 'live';
  }

  /** The EventSource's readyState, or null without one (describe()). */
  get streamState() {
    return this._es ? this._es.readyState : null;
  }

  // ---- HTTP -------------------------------------------------------------------

  /** @param {string} path */
  url(path) {
    return this.baseUrl + path;
  }

  /**
   * One request with the latest token. A token about to expire is refreshed first; on a
   * 401 the tabs are asked for a fresh token once and the request is retried with it.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<GatewayResponse>}
   */
  async request(method, path, body) {
    await this._refreshIfExpiring();
    const token = this.token;
    let r = await this._fetchOnce(method, path, body, token);
    if (r.status === 401 && !this.hub.closed) {
      const fresh = await this.refreshToken(token);
      if (fresh && fresh !== token) r = await this._fetchOnce(method, path, body, fresh);
    }
    if (r.status === 401) this.setAuthProblem(r);
    else if (r.ok) this.setAuthProblem(null);
    return r;
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} body
   * @param {string|null} token
   */
  async _fetchOnce(method, path, body, token) {
    let res;
    try {
      res = await this._fetch(this.url(path), requestInit(method, body, token));
    } catch (err) {
      this.hub.note(`${method} ${path} failed: ${err.message}`);
      throw err;
    }
    if (method !== 'GET' || !res.ok) this.hub.note(`${method} ${path} ${res.status}`);
    return readResponse(res);
  }

  // ---- access tokens ----------------------------------------------------------

  /**
   * A tab sent its token (hello, a change, or an answer to {t:'token?'}).
   * @param {unknown} token
   */
  takeToken(token) {
    const waiters = [...this._tokenWaiters];
    this._tokenWaiters.clear();
    if (typeof token === 'string' && token && token !== this.token) {
      const before = tokenClaims(this.token);
      this.token = token;
      this._staleAsks = 0;
      this._nextStaleAsk = 0;
      this._nextEarlyAsk = 0;
      const after = tokenClaims(token);
      if (before && after && before.sub !== after.sub) {
        this._userChanged(before.sub, after.sub);
      } else if (this._started) {
        // What the old token was refused may work now: sessions that failed (403), and
        // a stream waiting out its backoff.
        this.hub.book.retryFailed();
        if (this.authProblem && this._reopenTimer) this.reopen(0);
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
   * @returns {Promise<string|null>}
   */
  async refreshToken(refused) {
    if (refused !== undefined && refused !== this.token) return this.token; // a newer one came
    const tabs = this.hub.relay.refreshableTabs();
    if (!tabs.length || this.hub.closed) return this.token;
    if (!this._tokenAsk) {
      // Tabs just answered (e.g. right before this reconnect): their answer is current.
      if (Date.now() - this._askedAt < 1000) return this.token;
      if (refused !== undefined && refused === this.token && Date.now() < this._nextStaleAsk) return this.token;
      this.hub.note('asking tabs for a fresh token');
      this._tokenAsk = new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this._tokenWaiters.delete(done);
          this._askedAt = Date.now();
          resolve();
        };
        const timer = setTimeout(done, TOKEN_WAIT_MS);
        this._tokenWaiters.add(done);
        this.hub.relay.askToken(tabs);
      }).finally(() => { this._tokenAsk = null; });
    }
    await this._tokenAsk;
    if (refused !== undefined && refused === this.token) {
      // Nothing new: back off before asking again for this token.
      this._staleAsks += 1;
      this._nextStaleAsk = Date.now() + Math.min(this._maxBackoffMs, 1000 * 2 ** Math.min(this._staleAsks, 6));
    }
    return this.token;
  }

  /** Before a request: a token expiring soon (per its unverified `exp`) is refreshed. */
  async _refreshIfExpiring() {
    const exp = tokenClaims(this.token)?.exp;
    if (typeof exp !== 'number' || exp * 1000 - Date.now() > TOKEN_EARLY_MS) return;
    if (Date.now() < this._nextEarlyAsk && !this._tokenAsk) return;
    this._nextEarlyAsk = Date.now() + 5000;
    await this.refreshToken();
  }

  /** @param {{status: number, code: string|null, message?: string}|null} r */
  setAuthProblem(r) {
    const problem = r ? { status: r.status, code: r.code, message: r.message || '' } : null;
    const same = problem && this.authProblem && problem.code === this.authProblem.code;
    if (same || (!problem && !this.authProblem)) return;
    this.authProblem = problem;
    if (problem) console.warn(`gateway hub: the gateway refuses the token (${problem.code})`);
    this.hub.relay.auth(problem);
  }

  /**
   * The tabs now use another user's token. Muxes and their connections belong to the
   * subject that created them, and states were loaded with the old user's rights: drop
   * them and start over with a new mux.
   * @param {string|undefined} from
   * @param {string|undefined} to
   */
  _userChanged(from, to) {
    this.hub.note(`token subject changed from ${from} to ${to}`);
    const muxId = this.muxId;
    if (!muxId || this.hub.closed) return; // the mux is being created: with the new token
    this.closeStream();
    this.hub.book.userChanged();
    this.renewMux(muxId);
  }

  /**
   * sleep(ms) of a retry loop; a new token ends it early (what failed may work now).
   * @param {number} ms
   * @returns {Promise<void>}
   */
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

  /**
   * The mux id a tab stored (its hello), used until the hub has one of its own.
   * @param {unknown} mux
   */
  adoptMuxId(mux) {
    if (!this.muxId && !this._ready && typeof mux === 'string' && mux) this.muxId = mux;
  }

  /** Validate or create the mux, then open the stream. */
  start() {
    if (this._started) return;
    this._started = true;
    this.setStatus('reconnecting');
    this._ready = this._initMux();
    this._ready.then(() => this._openStream(), () => {});
  }

  /**
   * Validate the stored mux id (and learn its committed offsets) or create a mux.
   * @returns {Promise<string>}
   */
  async _initMux() {
    let delay = 500;
    for (;;) {
      if (this.hub.closed) throw new Error('hub closed');
      try {
        if (this.muxId) {
          const r = await this.request('GET', `/v1/mux/${enc(this.muxId)}`);
          if (r.ok) {
            this.hub.book.learnMux(r.data);
            return this.muxId;
          }
          if (r.status !== 404 && r.status !== 400) throw new HttpError(r);
          this.muxId = null; // expired or foreign: start a new one
        }
        return await this._createMux();
      } catch (err) {
        this.setStatus('offline');
        if (err.status === 403) this.setAuthProblem(err); // a token without `view`
        console.warn('gateway hub: cannot open the mux, retrying', err);
        await this._pause(delay);
        delay = Math.min(delay * 2, this._maxBackoffMs);
      }
    }
  }

  /** @returns {Promise<string>} */
  async _createMux() {
    const r = await this.request('POST', '/v1/mux', {});
    if (!r.ok || !r.data || typeof r.data.mux_id !== 'string') throw new HttpError(r);
    this.muxId = r.data.mux_id;
    this.hub.book.muxCreated();
    this.hub.relay.mux(this.muxId);
    return this.muxId;
  }

  /**
   * The mux `staleId` is gone (404 mux_not_found): create a new one and re-subscribe.
   * @param {string} staleId
   * @returns {Promise<string>}
   */
  renewMux(staleId) {
    if (this.muxId !== staleId || this.hub.closed) return this._ready;
    this.muxId = null;
    this._ready = (async () => {
      let delay = 500;
      for (;;) {
        try {
          return await this._createMux();
        } catch (err) {
          if (this.hub.closed) throw err;
          console.warn('gateway hub: cannot create a mux, retrying', err);
          await this._pause(delay);
          delay = Math.min(delay * 2, this._maxBackoffMs);
        }
      }
    })();
    this._ready.then(() => {
      this._openStream();
      this.hub.book.kickViewed();
    }, () => {});
    return this._ready;
  }

  // ---- the one EventSource ----------------------------------------------------

  _openStream() {
    if (this.hub.closed || !this.muxId) return;
    this.closeStream();
    clearTimeout(this._reopenTimer);
    this._reopenTimer = null;
    const gen = ++this._esGen;
    const muxId = this.muxId;
    const es = new this._EventSource(withToken(this.url(`/v1/mux/${enc(muxId)}/events`), this.token));
    this._es = es;
    this._onStream(es);
    if (this.status !== 'live') this.setStatus('reconnecting');
    const sync = this.hub.sync;
    /**
     * @param {(ev: MessageEvent) => void} fn
     * @returns {(ev: Event) => void}
     */
    const live = (fn) => (ev) => {
      if (this._esGen === gen && !this.hub.closed) fn(/** @type {MessageEvent} */ (ev));
    };

    es.addEventListener('open', live(() => {
      this.hub.note('stream open');
      this._backoff = 0;
      this.setStatus('live');
    }));
    es.addEventListener('message', live((ev) => sync.onEnvelope(ev)));
    es.addEventListener('subscribed', live((ev) => sync.onSubscribed(parseFrame(ev))));
    es.addEventListener('unsubscribed', live(() => { /* informational */ }));
    es.addEventListener('reset', live((ev) => sync.onReset(parseFrame(ev))));
    es.addEventListener('session', live((ev) => {
      const entry = parseFrame(ev);
      if (entry && typeof entry.session_id === 'string') this.hub.relay.activity(entry);
    }));
    es.addEventListener('close', live((ev) => this._onClose(parseFrame(ev))));
    es.addEventListener('error', live(() => {
      if (es.readyState === ES_CLOSED) {
        // Non-200 answer (404 for an expired mux, 5xx): the browser gave up. We retry
        // ourselves with backoff, re-validating the mux first.
        this.closeStream();
        this.setStatus('offline');
        this.reopen();
      } else if (es.readyState === ES_CONNECTING) {
        // The browser retries on its own (`retry: 2000`); every session resumes from
        // its committed offset and we drop what we already hold.
        this.setStatus('reconnecting');
      }
    }));
  }

  closeStream() {
    if (!this._es) return;
    this._esGen += 1;
    this._es.close();
    this._es = null;
    this._onStream(null);
  }

  /**
   * Reopen the stream after `delayMs`, or after the next exponential backoff step
   * (with jitter) when omitted; the mux is re-validated first.
   * @param {number} [delayMs]
   */
  reopen(delayMs) {
    if (this.hub.closed) return;
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
        await this.refreshToken();
        const r = await this.request('GET', `/v1/mux/${enc(muxId)}`);
        if (r.status === 404) {
          this.renewMux(muxId);
          return;
        }
        if (!r.ok) throw new HttpError(r);
        this.hub.acks.learnCommitted(r.data);
      } catch (err) {
        console.warn('gateway hub: cannot reconnect, retrying', err);
        this.reopen();
        return;
      }
      if (this.muxId === muxId) this._openStream();
    }, delay);
  }

  /** A tab asked to reconnect now (after 'superseded', or to skip a backoff). */
  reconnect() {
    this._superseded = [];
    if (this.status !== 'live') this.reopen(0);
  }

  /** The stall watchdog found the stream silent while the log moved on: replace it. */
  replaceStalled() {
    this.closeStream();
    this.setStatus('reconnecting');
    this.reopen(0);
  }

  /** @param {{reason?: string}|null} data */
  _onClose(data) {
    if (data && data.reason === 'token_expired') {
      this._tokenExpired();
      return;
    }
    if (!data || data.reason !== 'superseded') return;
    this.closeStream();
    this.setStatus('superseded');
    const now = Date.now();
    this._superseded = this._superseded.filter((t) => now - t < 60000);
    this._superseded.push(now);
    // Another hub attached our mux (a window that could not share our worker). Take it
    // back once after 1 s; if it keeps happening, stop the ping-pong and wait for
    // the user ('reconnect').
    if (this._superseded.length > 3) return;
    this.reopen(1000);
  }

  /**
   * The gateway ended the stream at the token's `exp`. Ack what the tabs have processed
   * (so the stored offsets are exact), get a fresh token from the tabs, and reopen at once:
   * every session resumes from its stored offset, nothing is lost or shown twice.
   */
  async _tokenExpired() {
    this.closeStream();
    this.setStatus('reconnecting');
    this.hub.note('stream ended: token expired');
    try {
      await this.hub.acks.flushAll();
    } catch (err) {
      console.warn('gateway hub: ack before the token refresh failed', err);
    }
    await this.refreshToken(this.token);
    this.reopen(0);
  }

  /** @param {'live'|'reconnecting'|'offline'|'superseded'} status */
  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.hub.relay.status(status);
  }

  close() {
    clearTimeout(this._reopenTimer);
    this.closeStream();
  }
}
