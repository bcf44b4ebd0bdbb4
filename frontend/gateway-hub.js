// @ts-check
// The per-browser hub: owns the ONE EventSource of the browser (GET /v1/mux/{id}/events),
// the folded state of every session any tab views, the subscriptions, and the manual
// commit (acks). It runs either in a SharedWorker (gateway-worker.js) or, where
// SharedWorker is missing, in the tab that holds the 'gateway-leader' Web Lock
// (gateway-client.js). Tabs talk to it with small messages; the transport only has to
// deliver them in order.
//
// This module is the facade that wires its parts together:
//   gateway-hub-transport.js  MuxTransport: the EventSource, the mux, reconnects with
//                             backoff, access tokens and every HTTP request (with the
//                             helpers of gateway-http.js)
//   gateway-hub-sessions.js   SessionBook: per-session entries, subscribe/unsubscribe
//   gateway-hub-sync.js       StateSync: folding events, snapshots, re-syncs, stall watchdog
//   gateway-hub-acks.js       AckBook: manual commit (acks), committed offsets, beacon
//   gateway-hub-relay.js      TabRelay: the tabs and the tab <-> hub PROTOCOL (documented
//                             at its top)
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

import { tokenClaims } from './gateway-http.js';
import { AckBook } from './gateway-hub-acks.js';
import { TabRelay } from './gateway-hub-relay.js';
import { SessionBook } from './gateway-hub-sessions.js';
import { StateSync } from './gateway-hub-sync.js';
import { MuxTransport } from './gateway-hub-transport.js';

export { HUB_PROTOCOL } from './gateway-hub-relay.js';
export { readResponse, requestInit, tokenClaims, withToken } from './gateway-http.js';

/**
 * Delivers a message to some tabs ('*': all of them).
 * @typedef {(tabs: string[]|'*', msg: import('./gateway-hub-relay.js').HubMessage) => void} HubSend
 */

/**
 * @typedef {object} HubOptions
 * @property {HubSend} send deliver a message to tabs
 * @property {'shared-worker'|'broadcast-leader'} transport what tabs report as transport
 * @property {string} [baseUrl]
 * @property {typeof fetch} [fetch]
 * @property {typeof EventSource} [EventSource]
 * @property {LockManager|null} [locks]
 * @property {number} [ackIntervalMs] default 1000
 * @property {number} [maxBackoffMs] default 10000
 * @property {number} [unsubscribeGraceMs] default 1500
 * @property {(es: EventSource|null) => void} [onStream] told when the EventSource changes
 * @property {(tab: string) => void} [onTabGone] told when a tab is forgotten
 * @property {string} [accessToken] a first token; tabs send theirs in hello and 'token'
 */

export class GatewayHub {
  /** @param {HubOptions} opts */
  constructor(opts) {
    this.transport = opts.transport;
    this._started = false;
    this._closed = false;
    /** @type {string[]} recent requests and decisions, for describe() */
    this._log = [];
    this.net = new MuxTransport(this, opts);
    this.book = new SessionBook(this, opts);
    this.sync = new StateSync(this, opts);
    this.acks = new AckBook(this, opts);
    this.relay = new TabRelay(this, opts);
  }

  /** Whether close() was called. */
  get closed() {
    return this._closed;
  }

  get baseUrl() {
    return this.net.baseUrl;
  }

  /** @returns {string|null} */
  get muxId() {
    return this.net.muxId;
  }

  /** @returns {'live'|'reconnecting'|'offline'|'superseded'} */
  get status() {
    return this.net.status;
  }

  /** {status, code, message} while the gateway refuses our token, else null. */
  get authProblem() {
    return this.net.authProblem;
  }

  /** The tabs this hub serves. */
  get tabs() {
    return this.relay.tabs;
  }

  /** The sessions this hub holds. */
  get sessions() {
    return this.book.sessions;
  }

  /** Committed offsets of this mux (GET /v1/mux/{id}, then our acks). */
  get committed() {
    return this.acks.committed;
  }

  /** Times the watchdog found the stream silent while the log moved on. */
  get stalls() {
    return this.sync.stalls;
  }

  /**
   * A message from a tab (see the PROTOCOL in gateway-hub-relay.js).
   * @param {import('./gateway-hub-relay.js').TabMessage} msg
   */
  handle(msg) {
    this.relay.handle(msg);
  }

  /**
   * Forget a tab (bye, or its liveness lock was freed).
   * @param {string} tab
   */
  removeTab(tab) {
    this.relay.removeTab(tab);
  }

  /**
   * What an unloading leader tab sends with navigator.sendBeacon: every offset not
   * yet acked. Marks them acked (a beacon is fire and forget).
   * @returns {{url: string, body: string}|null}
   */
  takeBeacon() {
    return this.acks.takeBeacon();
  }

  /** Called by the first hello: open the mux and start the timers. */
  start() {
    if (this._started || this._closed) return;
    this._started = true;
    this.net.start();
    this.acks.start();
    this.sync.start();
  }

  /** Stop everything (the leader tab leaves; the worker has no tab left). */
  close() {
    if (this._closed) return;
    this._closed = true;
    this.acks.stop();
    this.sync.stop();
    this.net.close();
    this.relay.close();
    this.book.close();
  }

  /** @param {string} text a line for describe()'s log */
  note(text) {
    this._log.push(`${new Date().toISOString().slice(11, 23)} ${text}`);
    if (this._log.length > 200) this._log.splice(0, this._log.length - 200);
  }

  /** For tests and debugging (client.describeHub()). */
  describe() {
    const claims = tokenClaims(this.net.token);
    return {
      transport: this.transport,
      mux: this.muxId,
      status: this.status,
      stalls: this.stalls,
      tabs: [...this.tabs.keys()],
      stream: this.net.streamState,
      token: this.net.token ? { sub: claims?.sub ?? null, exp: claims?.exp ?? null } : null,
      auth: this.authProblem,
      sessions: this.book.describe(),
      log: this._log.slice(),
    };
  }
}
