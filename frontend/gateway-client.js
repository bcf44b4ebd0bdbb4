// Browser client for the agent gateway HTTP/SSE API (docs/api.md).
//
// Nothing in this module touches window, document, EventSource or storage at
// import time, so the pure fold (applyEvent) can be imported and tested in Node.

/** Event types with a documented payload; SSE `event:` names equal these. */
export const EVENT_TYPES = Object.freeze([
  'run.started',
  'message.delta',
  'reasoning.delta',
  'tool.started',
  'tool.completed',
  'approval.requested',
  'approval.resolved',
  'session.title',
  'run.completed',
  'run.failed',
  'run.cancelled',
]);

const TERMINAL_STATUS = {
  'run.completed': 'completed',
  'run.failed': 'failed',
  'run.cancelled': 'cancelled',
};

const RUN_EVENTS = new Set(EVENT_TYPES.filter((t) => t !== 'session.title'));

// EventSource.readyState values; spelled out so test doubles need not define them.
const ES_CONNECTING = 0;
const ES_CLOSED = 2;

/**
 * @typedef {{tool_call_id: string, name: string, args: object, status: 'running'|'completed',
 *   output: string|null, is_error: boolean, duration_ms: number|null}} ToolState
 * @typedef {{approval_id: string, prompt: string, decision: null|'approve'|'deny'}} ApprovalState
 * @typedef {{run_id: string, input: string, status: 'running'|'completed'|'failed'|'cancelled',
 *   text: string, reasoning: string, error: string|null, tools: ToolState[],
 *   approvals: ApprovalState[]}} RunState
 * @typedef {{session_id: string, status: 'idle'|'running', title: string|null,
 *   current_run: string|null, runs: RunState[],
 *   pending_approvals: {approval_id: string, run_id: string, prompt: string}[]}} SessionState
 * @typedef {{offset: string, session_id: string, run_id: string|null, type: string,
 *   data: object, ts: number}} Envelope
 */

/**
 * State of a session before its first event.
 * @param {string} sessionId
 * @returns {SessionState}
 */
export function emptyState(sessionId) {
  return {
    session_id: sessionId,
    status: 'idle',
    title: "",
    current_run: null,
    runs: [],
    pending_approvals: [],
  };
}

/**
 * Parse an offset `<epoch>_<seq>`.
 * @param {unknown} offset
 * @returns {{epoch: string, seq: number}|null} null when malformed
 */
export function parseOffset(offset) {
  if (typeof offset !== 'string') return null;
  const m = /^([0-9A-Fa-f]+)_(\d+)$/.exec(offset);
  // 12-digit seqs stay far below 2**53, so Number comparison is exact.
  return m ? { epoch: m[1].toLowerCase(), seq: Number(m[2]) } : null;
}

function newRun(runId, input) {
  return {
    run_id: runId,
    input: typeof input === 'string' ? input : '',
    status: 'running',
    text: '',
    reasoning: '',
    error: null,
    tools: [],
    approvals: [],
  };
}

function str(value) {
  return typeof value === 'string' ? value : value == null ? '' : String(value);
}

/**
 * Fold one event envelope into a session state, the same way the gateway builds
 * `GET /v1/sessions/{id}/snapshot`. Pure: the input state is never mutated; the
 * result shares untouched runs with it. Returns the very same object when the
 * event does not apply (unknown type, or a run event without run_id).
 * @param {SessionState} state
 * @param {Envelope} envelope
 * @returns {SessionState}
 */
export function applyEvent(state, envelope) {
  if (!envelope || typeof envelope.type !== 'string') return state;
  const { type } = envelope;
  const data = envelope.data && typeof envelope.data === 'object' ? envelope.data : {};

  if (type === 'session.title') {
    return { ...state, title: typeof data.title === 'string' ? data.title : null };
  }
  if (!RUN_EVENTS.has(type) || envelope.run_id == null) return state;

  const runId = envelope.run_id;
  const next = { ...state, runs: state.runs.slice() };
  let idx = -1;
  for (let i = next.runs.length - 1; i >= 0; i--) {
    if (next.runs[i].run_id === runId) { idx = i; break; }
  }
  if (idx === -1) {
    // Lazily created: the run.started may have been trimmed away or never seen.
    next.runs.push(newRun(runId, type === 'run.started' ? data.input : ''));
    idx = next.runs.length - 1;
    if (!(type in TERMINAL_STATUS)) {
      next.status = 'running';
      next.current_run = runId;
    }
  }
  const run = { ...next.runs[idx] };
  next.runs[idx] = run;

  switch (type) {
    case 'run.started':
      if (typeof data.input === 'string') run.input = data.input;
      run.status = 'running';
      next.status = 'running';
      next.current_run = runId;
      break;
    case 'message.delta':
      run.text += str(data.text);
      break;
    case 'reasoning.delta':
      run.reasoning += str(data.text);
      break;
    case 'tool.started': {
      const tool = {
        tool_call_id: data.tool_call_id,
        name: str(data.name),
        args: data.args ?? {},
        status: 'running',
        output: null,
        is_error: false,
        duration_ms: null,
      };
      const i = run.tools.findIndex((t) => t.tool_call_id === data.tool_call_id);
      run.tools = i === -1
        ? [...run.tools, tool]
        : run.tools.map((t, j) => (j === i ? { ...t, name: tool.name, args: tool.args } : t));
      break;
    }
    case 'tool.completed': {
      const done = {
        status: 'completed',
        output: data.output ?? null,
        is_error: Boolean(data.is_error),
        duration_ms: typeof data.duration_ms === 'number' ? data.duration_ms : null,
      };
      const i = run.tools.findIndex((t) => t.tool_call_id === data.tool_call_id);
      run.tools = i === -1
        ? [...run.tools, {
          tool_call_id: data.tool_call_id, name: str(data.name), args: data.args ?? {}, ...done,
        }]
        : run.tools.map((t, j) => (j === i ? { ...t, ...done } : t));
      break;
    }
    case 'approval.requested': {
      const id = data.approval_id;
      const prompt = str(data.prompt);
      if (!run.approvals.some((a) => a.approval_id === id)) {
        run.approvals = [...run.approvals, { approval_id: id, prompt, decision: null }];
      }
      if (!next.pending_approvals.some((p) => p.approval_id === id)) {
        next.pending_approvals = [...next.pending_approvals, { approval_id: id, run_id: runId, prompt }];
      }
      break;
    }
    case 'approval.resolved': {
      const id = data.approval_id;
      const decision = data.decision ?? null;
      run.approvals = run.approvals.some((a) => a.approval_id === id)
        ? run.approvals.map((a) => (a.approval_id === id ? { ...a, decision } : a))
        : [...run.approvals, { approval_id: id, prompt: '', decision }];
      next.pending_approvals = next.pending_approvals.filter((p) => p.approval_id !== id);
      break;
    }
    case 'run.completed':
    case 'run.failed':
    case 'run.cancelled':
      run.status = TERMINAL_STATUS[type];
      if (type === 'run.failed') run.error = data.error ?? null;
      next.status = 'idle';
      next.current_run = null;
      next.pending_approvals = next.pending_approvals.filter((p) => p.run_id !== runId);
      break;
    default:
      break;
  }
  return next;
}

/** Error for gateway answers the caller is not expected to handle inline. */
export class GatewayError extends Error {
  /** @param {{status: number, code: string, message?: string}} info */
  constructor({ status, code, message }) {
    super(message || `${code} (HTTP ${status})`);
    this.name = 'GatewayError';
    this.status = status;
    this.code = code;
  }
}

function memoryStorage() {
  const map = new Map();
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => { map.set(k, String(v)); },
    removeItem: (k) => { map.delete(k); },
  };
}

function defaultStorage() {
  // sessionStorage throws when storage is disabled; an in-memory fallback only
  // costs us connection reuse across reloads.
  try {
    const s = globalThis.sessionStorage;
    if (s) {
      s.getItem('gw.probe');
      return s;
    }
  } catch { /* fall through */ }
  return memoryStorage();
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
const enc = encodeURIComponent;

/**
 * Client for one browser tab. Keeps every visited session's folded state in
 * memory and holds at most one EventSource: the one for the viewed session.
 *
 * Offsets are acknowledged manually (commit "manual") once per second, before
 * switching sessions and on pagehide, so a reload resumes exactly where this
 * tab stopped processing.
 *
 * Events: `on('event', (sessionId, envelope, state) => …)`,
 * `on('state', (sessionId, state) => …)`, `on('status', (status) => …)` where
 * status is 'live' | 'reconnecting' | 'offline' | 'superseded'.
 */
export class GatewayClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] prefix for API paths, default same origin
   * @param {typeof fetch} [options.fetch]
   * @param {typeof EventSource} [options.EventSource]
   * @param {Storage} [options.storage] where connection ids live, default sessionStorage
   * @param {number} [options.ackIntervalMs] default 1000
   * @param {number} [options.maxBackoffMs] default 10000
   */
  constructor(options = {}) {
    this.baseUrl = (options.baseUrl ?? '').replace(/\/+$/, '');
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    this._EventSource = options.EventSource ?? globalThis.EventSource;
    this._storage = options.storage ?? defaultStorage();
    this._ackIntervalMs = options.ackIntervalMs ?? 1000;
    this._maxBackoffMs = options.maxBackoffMs ?? 10000;

    /** @type {Map<string, {state: SessionState, offset: string, acked: string|null, buffer: Envelope[], resyncing: boolean}>} */
    this._sessions = new Map();
    this._listeners = { event: new Set(), state: new Set(), status: new Set() };
    this._openSources = new Set();
    /** Read by tests: number of EventSources this client currently has open. */
    this.debug = { openEventSources: 0 };
    /** @type {'live'|'reconnecting'|'offline'|'superseded'} */
    this.status = 'offline';

    this._viewing = null; // session the caller asked for
    this._attached = null; // {sid, cid, es} of the session we stream (es null while down)
    this._gen = 0; // bumped by every view(); stale async work compares and bails out
    this._chain = Promise.resolve(); // serialises attach/detach so two streams never overlap
    this._retryTimer = null;
    this._retryAttempt = 0;
    this._ackTimer = null;
    this._ackInFlight = false;
    this._closed = false;

    this._onPageHide = this._onPageHide.bind(this);
    this._onPageShow = this._onPageShow.bind(this);
    this._win = typeof window !== 'undefined' ? window : null;
    if (this._win) {
      this._win.addEventListener('pagehide', this._onPageHide);
      this._win.addEventListener('pageshow', this._onPageShow);
    }
  }

  // ---- listeners -------------------------------------------------------

  /**
   * Subscribe to 'event', 'state' or 'status'.
   * @param {'event'|'state'|'status'} name
   * @param {Function} fn
   * @returns {() => void} unsubscribe
   */
  on(name, fn) {
    const set = this._listeners[name];
    if (!set) throw new Error(`unknown listener type: ${name}`);
    set.add(fn);
    return () => set.delete(fn);
  }

  /** @param {'event'|'state'|'status'} name @param {Function} fn */
  off(name, fn) {
    this._listeners[name]?.delete(fn);
  }

  _emit(name, ...args) {
    for (const fn of [...this._listeners[name]]) {
      try { fn(...args); } catch (err) { console.error(`gateway ${name} listener failed`, err); }
    }
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this._emit('status', status);
  }

  // ---- state accessors -------------------------------------------------

  /** Session currently viewed (or being switched to), or null. */
  get currentSession() {
    return this._viewing;
  }

  /**
   * In-memory state of a session, or null if it was never loaded.
   * @param {string} sessionId
   * @returns {SessionState|null}
   */
  getState(sessionId) {
    return this._sessions.get(sessionId)?.state ?? null;
  }

  /**
   * Offset of the last event folded into the session's state, or null.
   * @param {string} sessionId
   * @returns {string|null}
   */
  getOffset(sessionId) {
    return this._sessions.get(sessionId)?.offset ?? null;
  }

  // ---- HTTP ------------------------------------------------------------

  _url(path) {
    return this.baseUrl + path;
  }

  async _request(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await this._fetch(this._url(path), init);
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

  async _call(method, path, body) {
    const r = await this._request(method, path, body);
    if (!r.ok) throw new GatewayError(r);
    return r.data;
  }

  // Commands report conflicts (409) and vanished targets (404) as values: they
  // are normal races between tabs, workers and the user, not bugs.
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
    return data.session_id;
  }

  /**
   * Recently active sessions (GET /v1/sessions).
   * @returns {Promise<Array<{session_id: string, status: string, title: string|null,
   *   run_id: string|null, last_offset: string, updated_ms: number}>>}
   */
  async listSessions() {
    const data = await this._call('GET', '/v1/sessions');
    return (data && data.sessions) || [];
  }

  /**
   * Ask a worker to start a run.
   * @param {string} sessionId
   * @param {string} input
   * @returns {Promise<{ok: true, run_id: string}|{ok: false, status: number, code: string, message: string}>}
   *   `code` is 'run_active' while another run is running
   */
  startRun(sessionId, input) {
    return this._command('POST', `/v1/sessions/${enc(sessionId)}/runs`, { input });
  }

  /**
   * Request cancellation of a run.
   * @param {string} sessionId
   * @param {string} runId
   * @returns {Promise<{ok: true}|{ok: false, status: number, code: string, message: string}>}
   */
  cancel(sessionId, runId) {
    return this._command('POST', `/v1/sessions/${enc(sessionId)}/runs/${enc(runId)}/cancel`, {});
  }

  /**
   * Answer an approval request.
   * @param {string} sessionId
   * @param {string} approvalId
   * @param {'approve'|'deny'} decision
   * @returns {Promise<{ok: true, offset: string}|{ok: false, status: number, code: string, message: string}>}
   *   `code` is 'approval_already_resolved' or 'approval_not_found' on failure
   */
  answerApproval(sessionId, approvalId, decision) {
    return this._command('POST', `/v1/sessions/${enc(sessionId)}/approvals/${enc(approvalId)}`, { decision });
  }

  async _loadSnapshot(sid) {
    const path = `/v1/sessions/${enc(sid)}/snapshot`;
    let r = await this._request('GET', path);
    if (r.status === 404) {
      // Viewing a session id means wanting it; connections would create it anyway.
      await this.createSession(sid);
      r = await this._request('GET', path);
    }
    if (!r.ok) throw new GatewayError(r);
    const state = { ...emptyState(sid), ...(r.data.state || {}) };
    state.runs = state.runs || [];
    state.pending_approvals = state.pending_approvals || [];
    return { state, offset: r.data.offset };
  }

  // ---- viewing / streaming ----------------------------------------------

  _enqueue(task) {
    const p = this._chain.then(task);
    this._chain = p.catch(() => {});
    return p;
  }

  /**
   * Make `sessionId` the viewed session: acks and closes the previous stream,
   * loads the snapshot if the session is not in memory, then streams it.
   * Resolves once the stream is opening (or a retry is scheduled on failure).
   * @param {string} sessionId
   * @returns {Promise<void>}
   */
  view(sessionId) {
    if (this._closed) return Promise.reject(new Error('GatewayClient is closed'));
    this._viewing = sessionId;
    const gen = ++this._gen;
    this._clearRetry();
    return this._enqueue(() => this._switchTo(sessionId, gen));
  }

  /** Reopen the viewed session's stream, e.g. after 'superseded'. */
  reconnect() {
    if (this._viewing == null) return Promise.resolve();
    const sid = this._viewing;
    const gen = ++this._gen;
    this._clearRetry();
    this._retryAttempt = 0;
    return this._enqueue(() => this._connect(sid, gen));
  }

  async _switchTo(sid, gen) {
    if (gen !== this._gen) return; // a later view() already replaced this one
    const entry = this._sessions.get(sid);
    if (entry) this._emit('state', sid, entry.state);
    const a = this._attached;
    if (a && a.sid === sid && a.es) return;
    await this._connect(sid, gen);
  }

  async _detach() {
    const a = this._attached;
    if (!a) return;
    this._attached = null;
    // Close before acking so the ack covers every event this tab processed.
    this._closeSource(a);
    try { await this._ack(a.sid, a.cid); } catch (err) { console.warn('gateway: ack failed', err); }
  }

  async _connect(sid, gen) {
    if (gen !== this._gen || this._closed) return;
    if (this._attached && this._attached.sid !== sid) {
      await this._detach();
      if (gen !== this._gen) return;
    }
    let a = this._attached;
    if (!a) {
      a = { sid, cid: null, es: null };
      this._attached = a;
    }
    this._closeSource(a);
    try {
      let entry = this._sessions.get(sid);
      if (!entry) {
        const snap = await this._loadSnapshot(sid);
        if (gen !== this._gen) return;
        entry = { state: snap.state, offset: snap.offset, acked: null, buffer: [], resyncing: false };
        this._sessions.set(sid, entry);
        this._emit('state', sid, entry.state);
      }
      a.cid = await this._ensureConnection(sid, entry);
      if (gen !== this._gen || this._attached !== a) return;
      this._open(a, gen);
    } catch (err) {
      if (gen !== this._gen || this._closed) return;
      console.warn('gateway: attach failed', err);
      this._setStatus('offline');
      this._scheduleRetry(sid, gen);
    }
  }

  async _ensureConnection(sid, entry) {
    const key = `gw.conn.${sid}`;
    let cid = this._storageGet(key);
    if (cid) {
      // The ack doubles as an existence check and moves the stored offset up to
      // what we already hold (e.g. a snapshot loaded after a reload), so the
      // stream does not replay events we would only drop.
      const r = await this._postAck(sid, cid, entry.offset);
      if (r.status === 404) {
        cid = null;
      } else if (r.status === 409 && r.code === 'offset_ahead') {
        this._dropEntry(sid, entry);
        throw new GatewayError(r);
      } else if (r.ok) {
        entry.acked = entry.offset;
      }
    }
    if (!cid) {
      const r = await this._request('POST', `/v1/sessions/${enc(sid)}/connections`, {
        from: entry.offset ?? 'start',
        commit: 'manual',
      });
      if (!r.ok) {
        // offset_ahead: our state comes from a log the gateway no longer has; the
        // retry starts over from a fresh snapshot.
        if (r.status === 409) this._dropEntry(sid, entry);
        throw new GatewayError(r);
      }
      cid = r.data.connection_id;
      this._storageSet(key, cid);
      entry.acked = entry.offset;
    }
    return cid;
  }

  _dropEntry(sid, entry) {
    if (this._sessions.get(sid) === entry) this._sessions.delete(sid);
  }

  _open(a, gen) {
    const url = this._url(`/v1/sessions/${enc(a.sid)}/connections/${enc(a.cid)}/events`);
    const es = new this._EventSource(url);
    a.es = es;
    this._openSources.add(es);
    this._syncDebug();

    // Handlers of a replaced EventSource must not touch the current stream.
    const live = (fn) => (ev) => { if (a.es === es && this._attached === a) fn(ev); };
    const onEvent = live((ev) => this._onMessage(a.sid, ev));
    for (const type of EVENT_TYPES) es.addEventListener(type, onEvent);
    es.addEventListener('message', onEvent); // frames without an `event:` line
    es.addEventListener('reset', live(() => this._onReset(a.sid)));
    es.addEventListener('close', live((ev) => this._onClose(a, ev)));
    es.addEventListener('open', live(() => {
      this._retryAttempt = 0;
      this._setStatus('live');
    }));
    es.addEventListener('error', live(() => {
      if (es.readyState === ES_CLOSED) {
        // The browser gave up (non-200 answer, e.g. 404 for an expired
        // connection); our own retry re-validates the connection id first.
        this._closeSource(a);
        this._setStatus('offline');
        this._scheduleRetry(a.sid, gen);
      } else if (es.readyState === ES_CONNECTING) {
        this._setStatus('reconnecting');
      }
    }));
    this._startAckTimer();
  }

  _closeSource(a) {
    if (!a || !a.es) return;
    a.es.close();
    this._openSources.delete(a.es);
    a.es = null;
    this._syncDebug();
  }

  _syncDebug() {
    this.debug.openEventSources = this._openSources.size;
  }

  _scheduleRetry(sid, gen) {
    this._clearRetry();
    if (this._closed || gen !== this._gen) return;
    const base = Math.min(this._maxBackoffMs, 1000 * 2 ** this._retryAttempt);
    const delay = Math.min(this._maxBackoffMs, base * (0.8 + Math.random() * 0.4));
    this._retryAttempt += 1;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._enqueue(() => this._connect(sid, gen));
    }, delay);
  }

  _clearRetry() {
    if (this._retryTimer != null) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _onMessage(sid, ev) {
    let env;
    try { env = JSON.parse(ev.data); } catch { return; }
    if (!env || typeof env !== 'object') return;
    if (typeof env.type !== 'string' && ev.type !== 'message') env.type = ev.type;
    if (env.offset == null && ev.lastEventId) env.offset = ev.lastEventId;
    if (env.session_id != null && env.session_id !== sid) return;
    this._ingest(sid, env);
  }

  _ingest(sid, env) {
    const entry = this._sessions.get(sid);
    if (!entry) return;
    if (entry.resyncing) {
      entry.buffer.push(env);
      return;
    }
    const off = parseOffset(env.offset);
    if (!off) return; // without a position we can neither de-duplicate nor ack it
    const cur = parseOffset(entry.offset);
    if (!cur || off.epoch !== cur.epoch) {
      // Another log: our state and offsets are meaningless, same as a reset.
      entry.buffer.push(env);
      this._resync(sid, entry);
      return;
    }
    if (off.seq <= cur.seq) return; // replay after reconnect, or already in the snapshot
    if (off.seq > cur.seq + 1) {
      // Seqs are consecutive, so a jump proves we missed events: re-sync rather
      // than render a silently wrong transcript.
      entry.buffer.push(env);
      this._resync(sid, entry);
      return;
    }
    entry.state = applyEvent(entry.state, env);
    entry.offset = env.offset;
    this._emit('event', sid, env, entry.state);
    this._emit('state', sid, entry.state);
  }

  _onReset(sid) {
    const entry = this._sessions.get(sid);
    if (entry) this._resync(sid, entry);
  }

  async _resync(sid, entry) {
    if (entry.resyncing) return;
    entry.resyncing = true;
    let delay = 500;
    for (;;) {
      try {
        const snap = await this._loadSnapshot(sid);
        entry.state = snap.state;
        entry.offset = snap.offset;
        break;
      } catch (err) {
        if (this._closed || this._attached?.sid !== sid) {
          // Nobody is watching: forget the stale state; the next view reloads it.
          entry.resyncing = false;
          entry.buffer = [];
          this._dropEntry(sid, entry);
          return;
        }
        console.warn('gateway: snapshot reload failed', err);
        await sleep(delay);
        delay = Math.min(delay * 2, this._maxBackoffMs);
      }
    }
    entry.resyncing = false;
    const buffered = entry.buffer.splice(0);
    this._emit('state', sid, entry.state);
    for (const env of buffered) this._ingest(sid, env);
  }

  _onClose(a, ev) {
    let reason = null;
    try { reason = JSON.parse(ev.data).reason; } catch { /* ignore */ }
    if (reason !== 'superseded') return;
    this._closeSource(a);
    this._clearRetry();
    // Our connection id now belongs to someone else — typically a duplicated
    // tab, which copies sessionStorage. Forget it here so a manual reconnect
    // gets its own id instead of kicking the other tab off in turn.
    const key = `gw.conn.${a.sid}`;
    if (this._storageGet(key) === a.cid) this._storageRemove(key);
    a.cid = null;
    this._setStatus('superseded');
  }

  // ---- acks --------------------------------------------------------------

  _postAck(sid, cid, offset) {
    return this._request('POST', `/v1/sessions/${enc(sid)}/connections/${enc(cid)}/ack`, { offset });
  }

  async _ack(sid, cid) {
    const entry = this._sessions.get(sid);
    if (!entry || !cid || !entry.offset || entry.offset === entry.acked) return;
    const offset = entry.offset;
    const r = await this._postAck(sid, cid, offset);
    if (r.ok) entry.acked = offset;
  }

  _startAckTimer() {
    if (this._ackTimer != null) return;
    this._ackTimer = setInterval(() => {
      const a = this._attached;
      if (!a || !a.cid || this._ackInFlight) return;
      this._ackInFlight = true;
      this._ack(a.sid, a.cid)
        .catch(() => { /* next tick retries */ })
        .finally(() => { this._ackInFlight = false; });
    }, this._ackIntervalMs);
  }

  _onPageHide() {
    const a = this._attached;
    if (!a) return;
    const entry = this._sessions.get(a.sid);
    if (a.cid && entry && entry.offset && entry.offset !== entry.acked) {
      const url = this._url(`/v1/sessions/${enc(a.sid)}/connections/${enc(a.cid)}/ack`);
      const body = JSON.stringify({ offset: entry.offset });
      // text/plain keeps the beacon a CORS-simple request; the gateway accepts it.
      const nav = this._win && this._win.navigator;
      const sent = nav && typeof nav.sendBeacon === 'function'
        && nav.sendBeacon(url, new Blob([body], { type: 'text/plain' }));
      if (sent) entry.acked = entry.offset;
    }
    // An open EventSource keeps the page out of the back/forward cache (or is
    // cut by the browser); pageshow reopens it.
    this._closeSource(a);
    this._clearRetry();
  }

  _onPageShow(ev) {
    if (!ev.persisted || this._closed || this._viewing == null) return;
    this.reconnect();
  }

  // ---- storage -----------------------------------------------------------

  _storageGet(key) {
    try { return this._storage.getItem(key); } catch { return null; }
  }

  _storageSet(key, value) {
    try { this._storage.setItem(key, value); } catch { /* quota or disabled */ }
  }

  _storageRemove(key) {
    try { this._storage.removeItem(key); } catch { /* ignore */ }
  }

  /**
   * Ack the viewed session, close the stream and stop all timers. The client
   * cannot be used afterwards.
   * @returns {Promise<void>}
   */
  async close() {
    if (this._closed) return;
    this._closed = true;
    this._gen += 1;
    this._clearRetry();
    if (this._ackTimer != null) clearInterval(this._ackTimer);
    this._ackTimer = null;
    if (this._win) {
      this._win.removeEventListener('pagehide', this._onPageHide);
      this._win.removeEventListener('pageshow', this._onPageShow);
    }
    const a = this._attached;
    this._attached = null;
    if (a) {
      this._closeSource(a);
      try { await this._ack(a.sid, a.cid); } catch { /* best effort */ }
    }
    this._setStatus('offline');
  }
}
