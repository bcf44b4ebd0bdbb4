// @ts-check
// The hub's state sync (one part of GatewayHub, see gateway-hub.js): keeps every session
// state it holds exact. Folds the stream's events in order (de-duplicated by offset; a gap,
// another epoch, a `reset` or a `subscribed` beyond what it holds starts a re-sync),
// buffers what arrives while a snapshot loads, loads snapshots, re-syncs (a fresh snapshot
// and a PUT from its offset; retried with backoff, except on 400/403, which end in a fatal
// error to the tabs), and watches running sessions for a silently stalled stream. The
// entries are the session book's (gateway-hub-sessions.js).

import { applyEvent, normalizeState, parseOffset } from './gateway-fold.js';
import { HttpError, parseFrame } from './gateway-http.js';

/**
 * @typedef {import('./gateway-fold.js').SessionState} SessionState
 * @typedef {import('./gateway-fold.js').Envelope} Envelope
 * @typedef {import('./gateway-hub.js').GatewayHub} GatewayHub
 * @typedef {import('./gateway-hub.js').HubOptions} HubOptions
 * @typedef {import('./gateway-hub-sessions.js').Entry} Entry
 */

const enc = encodeURIComponent;
/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Events buffered for a session while its snapshot loads or it re-syncs. */
const BUFFER_LIMIT = 5000;
/**
 * A running (or just started) session silent this long gets one probe of its last
 * offset. An EventSource cannot see the gateway's `: hb` comments, so a stream stalled
 * by a half-open TCP connection, a proxy or a server bug is otherwise invisible.
 */
const STALL_MS = 12000;
const WATCHDOG_TICK_MS = 4000;

/**
 * 400 (invalid_id and the like) and 403 (a token without rights on this session):
 * retrying cannot help; a new token retries (MuxTransport.takeToken).
 * @param {{status?: number}} err
 */
export const isFatal = (err) => err.status === 400 || err.status === 403;

/**
 * Whether `a` is beyond `b` in the same log (a different epoch counts as beyond).
 * @param {string|null|undefined} a
 * @param {string|null|undefined} b
 */
function offsetBeyond(a, b) {
  const pa = parseOffset(a);
  const pb = parseOffset(b);
  if (!pa || !pb) return false;
  return pa.epoch !== pb.epoch || pa.seq > pb.seq;
}

export class StateSync {
  /**
   * @param {GatewayHub} hub
   * @param {HubOptions} opts
   */
  constructor(hub, opts) {
    this.hub = hub;
    this._maxBackoffMs = opts.maxBackoffMs ?? 10000;
    /** @type {ReturnType<typeof setInterval>|null} */
    this._watchTimer = null;
    this._probing = false;
    /** Times the watchdog found the stream silent while the log moved on. */
    this.stalls = 0;
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

  /** Start the stall watchdog (once the hub starts). */
  start() {
    this._watchTimer = setInterval(() => { this._watchdog(); }, WATCHDOG_TICK_MS);
  }

  stop() {
    clearInterval(this._watchTimer);
  }

  // ---- frames -----------------------------------------------------------------

  /** @param {MessageEvent} ev */
  onEnvelope(ev) {
    const env = parseFrame(ev);
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
   * @param {Entry} e
   * @param {Envelope} env
   * @param {boolean} quiet
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
    if (e.tabs.size) this.relay.event([...e.tabs], e.sid, env);
  }

  /** @param {{session_id?: string, offset?: string}|null} data */
  onSubscribed(data) {
    if (!data) return;
    this.hub.note(`subscribed ${data.session_id} after ${data.offset}`);
    const e = this.sessions.get(data.session_id);
    if (!e || !e.state || e.resyncing) return;
    const from = parseOffset(data.offset);
    const cur = parseOffset(e.offset);
    if (!from || !cur) return;
    // Delivery resumes after `from`: if that is beyond what we hold, the events in
    // between will never come.
    if (from.epoch !== cur.epoch ? !e.deadEpochs.has(from.epoch) : from.seq > cur.seq) this._resync(e, null);
  }

  /** @param {{session_id?: string}|null} data */
  onReset(data) {
    if (!data) return;
    const e = this.sessions.get(data.session_id);
    if (e && (e.tabs.size || e.subscribed)) this._resync(e, null);
  }

  // ---- snapshots and re-syncs -------------------------------------------------

  /**
   * First load of a viewed entry without a state: its snapshot, then what arrived meanwhile.
   * @param {Entry} e
   */
  async load(e) {
    e.buffer = e.buffer.slice(-BUFFER_LIMIT);
    await this._reload(e);
    this._drain(e);
  }

  /**
   * @param {string} sid
   * @returns {Promise<{state: SessionState, offset: string}>}
   */
  async _loadSnapshot(sid) {
    const path = `/v1/sessions/${enc(sid)}/snapshot`;
    let r = await this.net.request('GET', path);
    if (r.status === 404) {
      // Viewing a session id means wanting it; subscribing would need it anyway.
      const c = await this.net.request('POST', '/v1/sessions', { session_id: sid });
      if (!c.ok) throw new HttpError(c);
      r = await this.net.request('GET', path);
    }
    if (!r.ok) throw new HttpError(r);
    return { state: normalizeState(sid, r.data && r.data.state), offset: r.data.offset };
  }

  /**
   * Replace the entry's state with a fresh snapshot; tell its tabs.
   * @param {Entry} e
   */
  async _reload(e) {
    const snap = await this._loadSnapshot(e.sid);
    const old = parseOffset(e.offset);
    const now = parseOffset(snap.offset);
    if (old && now && old.epoch !== now.epoch) e.deadEpochs.add(old.epoch);
    e.state = snap.state;
    e.offset = snap.offset;
    if (e.tabs.size) this.relay.state([...e.tabs], e);
  }

  /** @param {Entry} e */
  _drain(e) {
    const buffered = e.buffer.splice(0);
    for (const env of buffered) this._apply(e, env, true);
  }

  /**
   * Reload the snapshot and re-subscribe from its offset (reset, gap, other epoch).
   * Retried with backoff, except on a fatal answer (400, 403): then the state is
   * dropped and the tabs get a fatal error, as when a first load fails so.
   * @param {Entry} e
   * @param {Envelope|null} env
   */
  _resync(e, env) {
    if (env && e.buffer.length < BUFFER_LIMIT) e.buffer.push(env);
    if (e.resyncing) return;
    this.hub.note(`resync ${e.sid} at ${e.offset}${env ? ` on ${env.offset}` : ''}`);
    e.resyncing = true;
    e.chain = e.chain.then(async () => {
      let delay = 500;
      for (;;) {
        if (this.hub.closed) return;
        if (!e.tabs.size) {
          // Nobody is looking: forget the stale state; the next view reloads it.
          e.state = null;
          e.offset = null;
          e.buffer = [];
          e.resyncing = false;
          this.hub.book.kick(e);
          return;
        }
        try {
          await this._reload(e);
          const muxId = await this.net.ready;
          const r = await this.net.request('PUT', `/v1/mux/${enc(muxId)}/sessions/${enc(e.sid)}`, { from: e.offset });
          if (r.status === 404 && r.code === 'mux_not_found') {
            e.subscribed = false;
            await this.net.renewMux(muxId);
          } else if (!r.ok) {
            throw new HttpError(r);
          } else {
            e.subscribed = true;
          }
          break;
        } catch (err) {
          if (isFatal(err)) {
            // Retrying cannot help. Drop the state (a new token, or viewing it again,
            // reloads it: SessionBook.retryFailed, _reconcile) and tell the tabs.
            console.warn(`gateway hub: re-sync of ${e.sid} failed: ${err.message}`);
            e.failures += 1;
            e.fatal = true;
            e.state = null;
            e.offset = null;
            e.buffer = [];
            e.resyncing = false;
            if (e.tabs.size) this.relay.error([...e.tabs], e.sid, err, true);
            return;
          }
          console.warn(`gateway hub: re-sync of ${e.sid} failed, retrying`, err);
          await sleep(delay);
          delay = Math.min(delay * 2, this._maxBackoffMs);
        }
      }
      e.resyncing = false;
      this._drain(e);
      this.hub.book.kick(e);
    });
  }

  /**
   * A tab started a run here, or saw the log ahead of us: events should follow.
   * @param {string} sid
   */
  expect(sid) {
    const e = this.sessions.get(sid);
    if (e && !(e.expectUntil > Date.now())) {
      e.expectUntil = Date.now() + 2 * STALL_MS;
      e.lastEventAt = Date.now();
    }
  }

  // ---- stall watchdog ---------------------------------------------------------

  async _watchdog() {
    if (this.hub.closed || this._probing || !this.net.live) return;
    const now = Date.now();
    const suspects = [...this.sessions.values()].filter((e) => e.subscribed && e.state && !e.resyncing
      && (e.state.status === 'running' || e.expectUntil > now)
      && now - e.lastEventAt > STALL_MS && now - e.lastProbeAt > STALL_MS);
    if (!suspects.length) return;
    this._probing = true;
    try {
      /** @type {[Entry, string|null][]} */
      const behind = [];
      for (const e of suspects) {
        e.lastProbeAt = Date.now();
        const r = await this.net.request('GET', `/v1/sessions/${enc(e.sid)}`);
        if (r.ok && r.data && offsetBeyond(r.data.last_offset, e.offset)) behind.push([e, e.offset]);
        if (r.ok && e.expectUntil && r.data && r.data.status !== 'running') e.expectUntil = 0;
      }
      if (!behind.length) return;
      // Give in-flight frames a moment, then check nothing moved.
      await sleep(1500);
      if (behind.some(([e, off]) => e.offset === off && e.subscribed && !e.resyncing)) {
        console.warn('gateway hub: the stream is silent while the log moved on; reconnecting');
        this.stalls += 1;
        this.net.replaceStalled();
      }
    } catch {
      /* the server is unreachable: the EventSource reports that itself */
    } finally {
      this._probing = false;
    }
  }
}
