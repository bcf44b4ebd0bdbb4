// @ts-check
// The hub's session book (one part of GatewayHub, see gateway-hub.js). Owns one entry per
// session some tab views (or recently viewed): its folded state and offset, the tabs that
// view it, and its subscription on the mux. Reconciles what tabs view with what the mux is
// subscribed to: PUT (from the offset the hub holds, after a first snapshot) and DELETE
// (after a grace period), one queued chain of steps per session, retried with backoff
// except on fatal answers. Keeping each state exact (folding events, snapshots, re-syncs)
// is gateway-hub-sync.js's; acks are gateway-hub-acks.js's; requests go through the
// transport (gateway-hub-transport.js) and messages to tabs through the relay
// (gateway-hub-relay.js).

import { normalizeState, parseOffset } from './gateway-fold.js';
import { HttpError } from './gateway-http.js';
import { isFatal } from './gateway-hub-sync.js';

/**
 * @typedef {import('./gateway-fold.js').SessionState} SessionState
 * @typedef {import('./gateway-fold.js').Envelope} Envelope
 * @typedef {import('./gateway-hub.js').GatewayHub} GatewayHub
 * @typedef {import('./gateway-hub.js').HubOptions} HubOptions
 */

/**
 * One session the hub holds.
 * @typedef {{sid: string, state: SessionState|null, offset: string|null, acked: string|null,
 *   tabs: Set<string>, subscribed: boolean, chain: Promise<void>, buffer: Envelope[],
 *   resyncing: boolean, deadEpochs: Set<string>, lastUsed: number, failures: number,
 *   fatal: boolean,
 *   retryTimer: ReturnType<typeof setTimeout>|null, releaseAt: number, lastEventAt: number,
 *   lastProbeAt: number, expectUntil: number}} Entry
 */

const enc = encodeURIComponent;

/** Unsubscribed sessions whose state the hub keeps, so switching back is instant. */
const CACHE_LIMIT = 24;
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

export class SessionBook {
  /**
   * @param {GatewayHub} hub
   * @param {HubOptions} opts
   */
  constructor(hub, opts) {
    this.hub = hub;
    this._maxBackoffMs = opts.maxBackoffMs ?? 10000;
    this._graceMs = opts.unsubscribeGraceMs ?? UNSUBSCRIBE_GRACE_MS;
    /** @type {Map<string, Entry>} */
    this.sessions = new Map();
    /** @type {Set<string>} Sessions GET /v1/mux/{id} reported subscribed when this hub started. */
    this._serverSubs = new Set();
  }

  get net() {
    return this.hub.net;
  }

  get relay() {
    return this.hub.relay;
  }

  close() {
    for (const e of this.sessions.values()) clearTimeout(e.retryTimer);
  }

  // ---- entries and the tabs viewing them --------------------------------------

  /**
   * @param {string} sid
   * @returns {Entry}
   */
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
      fatal: false, // refused for good (400/403): no reload until a new token or view
      retryTimer: null,
      releaseAt: 0,
      lastEventAt: Date.now(),
      lastProbeAt: 0,
      expectUntil: 0,
    };
  }

  /**
   * `tab` views `sid` (now or still). `seed`: the state the tab already holds, adopted by
   * a fresh hub (new leader, restarted worker, BFCache restore) instead of a snapshot.
   * @param {string} tab
   * @param {string} sid
   * @param {{state?: object, offset?: string}|null|undefined} seed
   */
  view(tab, sid, seed) {
    let e = this.sessions.get(sid);
    if (!e) {
      e = this._newEntry(sid);
      this.sessions.set(sid, e);
    }
    if (!e.state && seed && seed.state && parseOffset(seed.offset) && !e.resyncing) {
      e.state = normalizeState(sid, seed.state);
      e.offset = seed.offset;
    }
    if (!e.tabs.has(tab)) {
      e.fatal = false; // viewing it again is asking again
      e.tabs.add(tab);
      if (e.state && !e.resyncing) this.relay.state([tab], e);
    }
    e.lastUsed = Date.now();
    this.kick(e);
  }

  /**
   * `tab` stopped viewing `sid`; the last tab leaving starts its grace period.
   * @param {string} tab
   * @param {string} sid
   */
  unview(tab, sid) {
    const e = this.sessions.get(sid);
    if (!e) return;
    e.tabs.delete(tab);
    e.lastUsed = Date.now();
    if (!e.tabs.size) e.releaseAt = Date.now() + this._graceMs;
    this.kick(e);
  }

  /**
   * A tab asks for a session's state again ({t:'sync'}).
   * @param {string} tab
   * @param {string} sid
   */
  sendState(tab, sid) {
    const e = this.sessions.get(sid);
    if (e && e.state && !e.resyncing) this.relay.state([tab], e);
  }

  /** @returns {string[]} sessions viewed by some tab, sorted */
  viewed() {
    return [...this.sessions.values()].filter((e) => e.tabs.size > 0).map((e) => e.sid).sort();
  }

  /** @returns {Record<string, string>} how far the hub processed each session it holds */
  held() {
    /** @type {Record<string, string>} */
    const held = {};
    for (const e of this.sessions.values()) if (e.state && e.offset) held[e.sid] = e.offset;
    return held;
  }

  evict() {
    const idle = [...this.sessions.values()]
      .filter((e) => e.tabs.size === 0 && !e.subscribed && !e.resyncing)
      .sort((a, b) => b.lastUsed - a.lastUsed);
    for (const e of idle.slice(CACHE_LIMIT)) this.sessions.delete(e.sid);
  }

  // ---- the mux and the token (told by the transport) ---------------------------

  /**
   * GET /v1/mux/{id} answered when the hub started: committed offsets, and subscriptions
   * an earlier life of this browser left.
   * @param {any} data
   */
  learnMux(data) {
    this.hub.acks.learnCommitted(data);
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
          this.kick(e);
        }
      }, 5000);
    }
  }

  /** A new mux was created: it has no subscriptions and no committed offsets yet. */
  muxCreated() {
    this.hub.acks.clear();
    this._serverSubs.clear();
    for (const e of this.sessions.values()) {
      e.subscribed = false;
      e.acked = null;
    }
  }

  /** The mux was renewed: subscribe again what tabs view. */
  kickViewed() {
    for (const e of this.sessions.values()) if (e.tabs.size) this.kick(e);
  }

  /** A new token came: retry the viewed sessions that failed (e.g. 403 with the old one). */
  retryFailed() {
    for (const e of this.sessions.values()) {
      if (e.tabs.size && (!e.subscribed || !e.state) && !e.resyncing && e.failures) {
        e.fatal = false;
        this.kick(e);
      }
    }
  }

  /** The token's user changed: drop states and subscriptions (a new mux follows). */
  userChanged() {
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
  }

  // ---- per-session reconciliation ---------------------------------------------

  /**
   * Queue a reconciliation of the entry: subscribe if viewed, unsubscribe if not.
   * @param {Entry} e
   */
  kick(e) {
    clearTimeout(e.retryTimer);
    e.retryTimer = null;
    e.chain = e.chain.then(() => this._reconcile(e)).catch((err) => {
      if (this.hub.closed) return;
      e.failures += 1;
      console.warn(`gateway hub: session ${e.sid}: ${err.message}`);
      if (isFatal(err)) {
        e.fatal = true;
        if (e.tabs.size) this.relay.error([...e.tabs], e.sid, err, true);
        return;
      }
      if (e.failures >= 3 && e.tabs.size) this.relay.error([...e.tabs], e.sid, err, false);
      const delay = Math.min(this._maxBackoffMs, 500 * 2 ** Math.min(e.failures, 5));
      e.retryTimer = setTimeout(() => { e.retryTimer = null; this.kick(e); }, delay);
    });
  }

  /** @param {Entry} e */
  async _reconcile(e) {
    for (let round = 0; round < 5 && !this.hub.closed; round++) {
      const want = e.tabs.size > 0;
      // Subscribed but without a state: a re-sync gave up (fatal) or ran while nobody
      // looked. Load it again (a snapshot and a PUT from its offset).
      if (want && (!e.subscribed || !e.state) && !e.fatal) {
        const done = await this._subscribe(e);
        if (!done) continue; // the mux was renewed or the offset refused: go again
      } else if (!want && e.subscribed) {
        const wait = (e.releaseAt || 0) - Date.now();
        if (wait > 0) {
          // Grace period; a tab viewing it again cancels this timer (kick).
          clearTimeout(e.retryTimer);
          e.retryTimer = setTimeout(() => { e.retryTimer = null; this.kick(e); }, wait + 10);
          return;
        }
        await this._unsubscribe(e);
      }
      e.failures = 0;
      return;
    }
  }

  /**
   * @param {Entry} e
   * @returns {Promise<boolean>} true once subscribed
   */
  async _subscribe(e) {
    const muxId = await this.net.ready;
    if (!e.state) await this.hub.sync.load(e);
    if (!e.tabs.size) return true; // nobody wants it any more; the next round unsubscribes
    if (this._serverSubs.delete(e.sid)) {
      const c = parseOffset(this.hub.acks.committed.get(e.sid));
      const cur = parseOffset(e.offset);
      if (c && cur && c.epoch === cur.epoch && c.seq <= cur.seq && cur.seq - c.seq <= ADOPT_MAX_BEHIND) {
        e.subscribed = true;
        e.acked = this.hub.acks.committed.get(e.sid);
        return true;
      }
    }
    const r = await this.net.request('PUT', `/v1/mux/${enc(muxId)}/sessions/${enc(e.sid)}`, { from: e.offset });
    if (r.ok) {
      e.subscribed = true;
      const committed = r.data && r.data.offset;
      if (typeof committed === 'string') e.acked = committed;
      return true;
    }
    if (r.status === 404 && r.code === 'mux_not_found') {
      await this.net.renewMux(muxId);
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

  /** @param {Entry} e */
  async _unsubscribe(e) {
    const muxId = await this.net.ready;
    await this.hub.acks.flushAcks([e]);
    const r = await this.net.request('DELETE', `/v1/mux/${enc(muxId)}/sessions/${enc(e.sid)}`);
    if (!r.ok && r.status !== 404) throw new HttpError(r);
    e.subscribed = false;
    e.buffer = [];
    this.evict();
  }

  /** For describe(). */
  describe() {
    return [...this.sessions.values()].map((e) => ({
      sid: e.sid,
      offset: e.offset,
      acked: e.acked,
      tabs: e.tabs.size,
      subscribed: e.subscribed,
      resyncing: e.resyncing,
      status: e.state ? e.state.status : null,
    }));
  }
}
