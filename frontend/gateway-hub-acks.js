// @ts-check
// The hub's manual commit (one part of GatewayHub, see gateway-hub.js): every subscribed
// session is a manual-commit connection on the gateway. Once per ack interval, if anything
// advanced, one POST /v1/mux/{id}/ack carries the offsets the hub has processed; before an
// unsubscribe, before a token refresh, and in a leaving leader's beacon too. Also keeps the
// mux's committed offsets (GET /v1/mux/{id}, then our acks), which tabs use as read markers.

import { laterOffset, parseOffset } from './gateway-fold.js';
import { HttpError, withToken } from './gateway-http.js';

/**
 * @typedef {import('./gateway-hub.js').GatewayHub} GatewayHub
 * @typedef {import('./gateway-hub.js').HubOptions} HubOptions
 * @typedef {import('./gateway-hub-sessions.js').Entry} Entry
 */

const enc = encodeURIComponent;

export class AckBook {
  /**
   * @param {GatewayHub} hub
   * @param {HubOptions} opts
   */
  constructor(hub, opts) {
    this.hub = hub;
    this._ackIntervalMs = Math.max(100, opts.ackIntervalMs ?? 1000);
    /** @type {Map<string, string>} Committed offsets of this mux (GET /v1/mux/{id}, then our acks). */
    this.committed = new Map();
    /** @type {ReturnType<typeof setInterval>|null} */
    this._ackTimer = null;
    this._acking = false;
  }

  get net() {
    return this.hub.net;
  }

  get relay() {
    return this.hub.relay;
  }

  get sessions() {
    return this.hub.book.sessions;
  }

  /** Start acking periodically (once the hub starts). */
  start() {
    this._ackTimer = setInterval(() => { this._ackTick(); }, this._ackIntervalMs);
  }

  stop() {
    clearInterval(this._ackTimer);
  }

  /** A new mux: nothing is committed on it yet. */
  clear() {
    this.committed.clear();
  }

  /**
   * Merge GET /v1/mux/{id}'s committed offsets; tell tabs what moved.
   * @param {any} data
   */
  learnCommitted(data) {
    const sessions = (data && data.sessions) || {};
    /** @type {Record<string, string>} */
    const offsets = {};
    for (const [sid, info] of Object.entries(sessions)) {
      if (info && typeof info.offset === 'string') offsets[sid] = info.offset;
    }
    this._acked(offsets, false);
  }

  /**
   * @param {Iterable<Entry>} [entries]
   * @returns {Entry[]}
   */
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
    if (this._acking || !this.net.muxId) return;
    const dirty = this._dirty();
    if (!dirty.length) return;
    this._acking = true;
    this.flushAcks(dirty)
      .catch((err) => console.warn('gateway hub: ack failed', err))
      .finally(() => { this._acking = false; });
  }

  /** Ack every session now (before the stream is reopened with a fresh token). */
  flushAll() {
    return this.flushAcks([...this.sessions.values()]);
  }

  /**
   * One POST /v1/mux/{id}/ack for the given entries' offsets.
   * @param {Entry[]} entries
   */
  async flushAcks(entries) {
    const dirty = this._dirty(entries);
    const muxId = this.net.muxId;
    if (!dirty.length || !muxId) return;
    /** @type {Record<string, string>} */
    const offsets = {};
    for (const e of dirty) offsets[e.sid] = e.offset;
    const r = await this.net.request('POST', `/v1/mux/${enc(muxId)}/ack`, { offsets });
    if (r.ok) {
      this._acked(offsets);
    } else if (r.status === 404 && r.code === 'mux_not_found') {
      this.net.renewMux(muxId);
    } else if (r.status === 404) {
      // session_not_subscribed: the mux does not know one of them (the whole batch is
      // refused). Subscribe them again; the next tick acks.
      for (const e of dirty) {
        e.subscribed = false;
        this.hub.book.kick(e);
      }
    } else {
      throw new HttpError(r);
    }
  }

  /**
   * @param {Record<string, string>} offsets
   * @param {boolean} [ours] acks we sent (else offsets the gateway reported)
   */
  _acked(offsets, ours = true) {
    /** @type {Record<string, string>} */
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
    if (Object.keys(moved).length) this.relay.read(moved);
  }

  /**
   * What an unloading leader tab sends with navigator.sendBeacon: every offset not
   * yet acked. Marks them acked (a beacon is fire and forget).
   * @returns {{url: string, body: string}|null}
   */
  takeBeacon() {
    const dirty = this._dirty();
    const muxId = this.net.muxId;
    if (!dirty.length || !muxId) return null;
    /** @type {Record<string, string>} */
    const offsets = {};
    for (const e of dirty) offsets[e.sid] = e.offset;
    for (const e of dirty) e.acked = e.offset;
    const url = withToken(this.net.url(`/v1/mux/${enc(muxId)}/ack`), this.net.token);
    return { url, body: JSON.stringify({ offsets }) };
  }
}
