// @ts-check
// The hub's tab relay (one part of GatewayHub, see gateway-hub.js). Owns the tabs the hub
// serves (their views, their liveness locks, whether they can mint tokens) and the
// message PROTOCOL between tabs and the hub, below: it turns tab messages into calls on
// the session book and the transport, and builds every message the hub sends to tabs.
// The wire itself is the `send(tabs, message)` function the hub was given (a
// SharedWorker's ports, or the leader tab's BroadcastChannel); it only has to deliver
// messages in order.
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
//     {t:'welcome', transport, protocol, mux, status, committed:{sid:offset}, subs:[sid], auth}
//     {t:'mux', mux}                 the mux id changed (tabs store it)
//     {t:'status', status}           'live'|'reconnecting'|'offline'|'superseded'
//     {t:'state', sid, state, offset}  full state (first view, reset, re-sync)
//     {t:'event', sid, env}          one envelope folded after the last state/event
//     {t:'activity', entry}          an activity-feed entry (every session)
//     {t:'read', offsets:{sid:offset}}  committed offsets that moved (after an ack)
//     {t:'subs', sids:[sid], held:{sid:offset}}  sessions viewed by some tab; how far the
//                                    hub processed each session it holds
//     {t:'error', sid, message, status, code, fatal}  loading a session keeps failing (the
//                                    hub retries unless fatal: 400 invalid_id, 403); a
//                                    fatal error also ends a re-sync (the state is dropped)
//     {t:'token?'}                   send me a fresh access token ({t:'token'}); only to
//                                    tabs that said they are `refreshable`
//     {t:'auth', problem}            the gateway refuses the hub's token even after a
//                                    refresh: {status, code, message}; null once it works
//     {t:'described', id, data}      the answer to 'describe'

/**
 * @typedef {import('./gateway-hub.js').GatewayHub} GatewayHub
 * @typedef {import('./gateway-hub.js').HubOptions} HubOptions
 * @typedef {import('./gateway-hub.js').HubSend} HubSend
 * @typedef {import('./gateway-hub-sessions.js').Entry} Entry
 * @typedef {import('./gateway-fold.js').Envelope} Envelope
 * @typedef {import('./gateway-hub-transport.js').AuthProblem} AuthProblem
 * @typedef {{lockAbort: AbortController|null, views: Set<string>, refreshable: boolean}} TabInfo
 * @typedef {{t: string, [field: string]: any}} HubMessage a message either way (PROTOCOL)
 * @typedef {HubMessage & {tab?: string}} TabMessage a message from a tab
 */

/** Version of this protocol, in the welcome. */
export const HUB_PROTOCOL = 1;

export class TabRelay {
  /**
   * @param {GatewayHub} hub
   * @param {HubOptions} opts
   */
  constructor(hub, opts) {
    this.hub = hub;
    /** @type {HubSend} */
    this._send = opts.send;
    /** @type {LockManager|null} */
    this._locks = opts.locks === undefined ? (globalThis.navigator?.locks ?? null) : opts.locks;
    this._onTabGone = opts.onTabGone ?? (() => {});
    /** @type {Map<string, TabInfo>} */
    this.tabs = new Map();
    this._subsKey = '';
  }

  get book() {
    return this.hub.book;
  }

  get net() {
    return this.hub.net;
  }

  // ---- tab -> hub -------------------------------------------------------------

  /**
   * A message from a tab.
   * @param {TabMessage} msg
   */
  handle(msg) {
    if (!msg || typeof msg !== 'object' || this.hub.closed) return;
    const tab = msg.tab;
    switch (msg.t) {
      case 'hello': this._hello(msg); break;
      case 'views': if (this.tabs.has(tab)) this._setViews(tab, msg.sids, null); break;
      case 'sync': this.book.sendState(tab, msg.sid); break;
      case 'reconnect': this.net.reconnect(); break;
      case 'expect': this.hub.sync.expect(msg.sid); break;
      case 'describe': this._send([tab], { t: 'described', id: msg.id, data: this.hub.describe() }); break;
      case 'token': {
        const info = this.tabs.get(tab);
        if (info && typeof msg.refreshable === 'boolean') info.refreshable = msg.refreshable;
        this.net.takeToken(msg.token);
        break;
      }
      case 'bye': this.removeTab(tab); break;
      default: break;
    }
  }

  /** @param {TabMessage} msg */
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
        const mine = info;
        this._locks.request(msg.lock, { signal: ctl.signal }, () => {
          if (this.tabs.get(tab) === mine) this.removeTab(tab);
        }).catch(() => { /* aborted on bye */ });
      }
    }
    info.refreshable = Boolean(msg.refreshable);
    this.net.takeToken(msg.token);
    this.net.adoptMuxId(msg.mux);
    this.hub.start();
    this._send([tab], {
      t: 'welcome',
      transport: this.hub.transport,
      protocol: HUB_PROTOCOL,
      mux: this.net.muxId,
      status: this.net.status,
      committed: Object.fromEntries(this.hub.acks.committed),
      subs: this.book.viewed(),
      auth: this.net.authProblem,
    });
    this._setViews(tab, msg.views, msg.have);
  }

  /**
   * Forget a tab (bye, or its liveness lock was freed).
   * @param {string} tab
   */
  removeTab(tab) {
    const info = this.tabs.get(tab);
    if (!info) return;
    this.tabs.delete(tab);
    if (info.lockAbort) info.lockAbort.abort();
    this._setViews(tab, [], null, info);
    this._onTabGone(tab);
  }

  /**
   * @param {string} tab
   * @param {unknown} sids
   * @param {Record<string, {state?: object, offset?: string}>|null|undefined} have
   * @param {TabInfo} [info]
   */
  _setViews(tab, sids, have, info = this.tabs.get(tab)) {
    const wanted = new Set(Array.isArray(sids) ? sids.filter((s) => typeof s === 'string' && s) : []);
    for (const sid of info.views) {
      if (!wanted.has(sid)) this.book.unview(tab, sid);
    }
    for (const sid of wanted) this.book.view(tab, sid, have && have[sid]);
    info.views = wanted;
    this._announceSubs();
    this.book.evict();
  }

  /** Tabs that can mint a fresh token (their accessToken option is a function). */
  refreshableTabs() {
    return [...this.tabs].filter(([, info]) => info.refreshable).map(([tab]) => tab);
  }

  close() {
    for (const info of this.tabs.values()) if (info.lockAbort) info.lockAbort.abort();
    this.tabs.clear();
  }

  // ---- hub -> tabs ------------------------------------------------------------

  _announceSubs() {
    const subs = this.book.viewed();
    const key = subs.join('\n');
    if (key === this._subsKey) return;
    this._subsKey = key;
    // `held`: how far the hub has processed each session it holds. A session a tab
    // just left is read up to there even before the ack that commits it returns.
    this._send('*', { t: 'subs', sids: subs, held: this.book.held() });
  }

  /**
   * A session's full state.
   * @param {string[]} tabs
   * @param {Entry} e
   */
  state(tabs, e) {
    this._send(tabs, { t: 'state', sid: e.sid, state: e.state, offset: e.offset });
  }

  /**
   * One envelope folded after the last state or event.
   * @param {string[]} tabs
   * @param {string} sid
   * @param {Envelope} env
   */
  event(tabs, sid, env) {
    this._send(tabs, { t: 'event', sid, env });
  }

  /**
   * Loading the session failed.
   * @param {string[]} tabs
   * @param {string} sid
   * @param {{message: string, status?: number, code?: string|null}} err
   * @param {boolean} fatal
   */
  error(tabs, sid, err, fatal) {
    this._send(tabs, {
      t: 'error', sid, message: err.message, status: err.status ?? null, code: err.code ?? null, fatal,
    });
  }

  /** @param {'live'|'reconnecting'|'offline'|'superseded'} status */
  status(status) {
    this._send('*', { t: 'status', status });
  }

  /** @param {AuthProblem|null} problem */
  auth(problem) {
    this._send('*', { t: 'auth', problem });
  }

  /** @param {string} mux */
  mux(mux) {
    this._send('*', { t: 'mux', mux });
  }

  /** @param {Record<string, string>} offsets committed offsets that moved */
  read(offsets) {
    this._send('*', { t: 'read', offsets });
  }

  /** @param {object} entry an activity-feed entry */
  activity(entry) {
    this._send('*', { t: 'activity', entry });
  }

  /** @param {string[]} tabs */
  askToken(tabs) {
    this._send(tabs, { t: 'token?' });
  }
}
