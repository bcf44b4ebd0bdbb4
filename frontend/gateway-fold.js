// @ts-check
// Pure session fold and offset helpers shared by the tab client (gateway-client.js)
// and the hub (gateway-hub.js, run in a SharedWorker or in the leader tab).
// No DOM, no network, no globals: importable in Node, a worker or a page.
//
// The fold implements the fold contract written down in gateway/core/fold.py (the
// gateway's fold, used for GET /v1/sessions/{id}/snapshot) and docs/api.md ("Fold
// contract"): a snapshot at offset X plus the events after X, folded here, equals the
// snapshot at the last of them. The shared fixtures in tests/fixtures/fold/ (run by
// tests/node/fold.test.mjs and tests/test_fold.py) and a randomized differential test
// against the Python fold (tests/test_fold.py, through tests/node/fold_cli.mjs) hold
// the two folds to it. In short:
//  - session.title sets a string title; other documented types are run events and need
//    a run_id (a non-empty string); unknown types are ignored; non-object data is {}.
//  - A run event of an unknown run creates the run ("lazily") without making the
//    session running: only run.started does that (as the gateway's session metadata).
//  - Only the current run's terminal makes the session idle; a terminal is final:
//    nothing of a run is folded after its first terminal.
//  - Tools (per run) and approvals (per run; pending ones per id) are keyed by id: a
//    repeated start/request is ignored, the first completion/decision stands, and a
//    completion/decision of an unknown id appends an entry with empty name/prompt.
//  - Fields of the wrong JSON type count as absent; strings default to '', args to {},
//    output/error/duration_ms to null, is_error is true only for JSON true.
//
// applyEvent never mutates its input and shares what an event does not change with it
// (the viewer compares runs, tools, approvals and pending_approvals by identity); an
// event that changes nothing returns the very same state object.

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

/**
 * The terminal event types and the run status each leaves. Mirrors
 * gateway.core.events.TERMINAL_STATUS (tests/test_fold.py checks they are equal).
 * @type {Readonly<Record<string, 'completed'|'failed'|'cancelled'>>}
 */
export const TERMINAL_STATUS = Object.freeze({
  'run.completed': 'completed',
  'run.failed': 'failed',
  'run.cancelled': 'cancelled',
});

const RUN_EVENTS = new Set(EVENT_TYPES.filter((t) => t !== 'session.title'));

/**
 * @typedef {{tool_call_id: string, name: string, args: Object<string, unknown>,
 *   status: 'running'|'completed', output: string|null, is_error: boolean,
 *   duration_ms: number|null}} ToolState
 * @typedef {{approval_id: string, prompt: string, decision: null|'approve'|'deny'}} ApprovalState
 * @typedef {'running'|'completed'|'failed'|'cancelled'} RunStatus
 * @typedef {{run_id: string, input: string, status: RunStatus,
 *   text: string, reasoning: string, error: string|null, tools: ToolState[],
 *   approvals: ApprovalState[]}} RunState
 * @typedef {{approval_id: string, run_id: string, prompt: string}} PendingApproval
 * @typedef {{session_id: string, status: 'idle'|'running', title: string,
 *   current_run: string|null, runs: RunState[], pending_approvals: PendingApproval[],
 *   truncated?: boolean}} SessionState
 * @typedef {{offset?: string, session_id?: string, run_id?: string|null, type: string,
 *   data?: unknown, ts?: number}} Envelope
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
    title: '',
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

/**
 * A run seen for the first time.
 * @param {string} runId
 * @returns {RunState}
 */
function newRun(runId) {
  return {
    run_id: runId,
    input: '',
    status: 'running',
    text: '',
    reasoning: '',
    error: null,
    tools: [],
    approvals: [],
  };
}

/** @param {unknown} value @returns {string} */
function str(value) {
  return typeof value === 'string' ? value : '';
}

/** @param {unknown} value @returns {string|null} */
function optStr(value) {
  return typeof value === 'string' ? value : null;
}

/** @param {unknown} value @returns {boolean} a JSON object (not null, not an array) */
function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Fold one event envelope into a session state by the fold contract (see the top of
 * this file), the same way the gateway builds `GET /v1/sessions/{id}/snapshot`. Pure:
 * the input state is never mutated; the result shares untouched runs, tools and
 * approvals with it. Returns the very same object when the event changes nothing
 * (unknown type, a run event without run_id, a duplicate, anything of an ended run).
 * @param {SessionState} state
 * @param {Envelope} envelope
 * @returns {SessionState}
 */
export function applyEvent(state, envelope) {
  if (!envelope || typeof envelope.type !== 'string') return state;
  const { type } = envelope;
  /** @type {Object<string, any>} */
  const data = isObject(envelope.data) ? /** @type {Object<string, any>} */ (envelope.data) : {};

  if (type === 'session.title') {
    if (typeof data.title !== 'string' || data.title === state.title) return state;
    return { ...state, title: data.title };
  }
  const runId = envelope.run_id;
  if (!RUN_EVENTS.has(type) || typeof runId !== 'string' || runId === '') return state;

  /** @type {string} */
  let key = '';
  if (type === 'tool.started' || type === 'tool.completed') {
    if (typeof data.tool_call_id !== 'string') return state;
    key = data.tool_call_id;
  } else if (type === 'approval.requested' || type === 'approval.resolved') {
    if (typeof data.approval_id !== 'string') return state;
    key = data.approval_id;
    if (type === 'approval.resolved' && data.decision !== 'approve' && data.decision !== 'deny') {
      return state;
    }
  }

  let idx = -1;
  for (let i = state.runs.length - 1; i >= 0; i--) {
    if (state.runs[i].run_id === runId) { idx = i; break; }
  }
  if (idx !== -1) {
    const known = state.runs[idx];
    if (known.status !== 'running') return state; // a terminal is final
    // Events that would change nothing: the same object back.
    if ((type === 'message.delta' || type === 'reasoning.delta') && str(data.text) === '') return state;
    if (type === 'run.started' && state.status === 'running' && state.current_run === runId
        && (typeof data.input !== 'string' || data.input === known.input)) return state;
  }
  // A lazily created run (its run.started trimmed away or never published) does not
  // make the session running: only run.started does.
  const old = idx === -1 ? newRun(runId) : state.runs[idx];
  /** @type {RunState} */
  const run = { ...old };
  /** @type {SessionState} */
  const next = { ...state, runs: state.runs.slice() };
  if (idx === -1) next.runs.push(run);
  else next.runs[idx] = run;

  switch (type) {
    case 'run.started':
      if (typeof data.input === 'string') run.input = data.input;
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
      if (run.tools.some((t) => t.tool_call_id === key)) return state; // duplicate start
      run.tools = [...run.tools, {
        tool_call_id: key,
        name: str(data.name),
        args: isObject(data.args) ? data.args : {},
        status: 'running',
        output: null,
        is_error: false,
        duration_ms: null,
      }];
      break;
    }
    case 'tool.completed': {
      const i = run.tools.findIndex((t) => t.tool_call_id === key);
      if (i !== -1 && run.tools[i].status !== 'running') return state; // first completion stands
      /** @type {ToolState} */
      const tool = {
        ...(i === -1 ? { tool_call_id: key, name: '', args: {} } : run.tools[i]),
        status: 'completed',
        output: optStr(data.output),
        is_error: data.is_error === true,
        duration_ms: typeof data.duration_ms === 'number' ? data.duration_ms : null,
      };
      run.tools = i === -1 ? [...run.tools, tool] : run.tools.map((t, j) => (j === i ? tool : t));
      break;
    }
    case 'approval.requested': {
      if (run.approvals.some((a) => a.approval_id === key)) return state; // duplicate request
      const prompt = str(data.prompt);
      run.approvals = [...run.approvals, { approval_id: key, prompt, decision: null }];
      // One pending entry per approval id: the gateway answers approvals by id.
      next.pending_approvals = [
        ...next.pending_approvals.filter((p) => p.approval_id !== key),
        { approval_id: key, run_id: runId, prompt },
      ];
      break;
    }
    case 'approval.resolved': {
      const i = run.approvals.findIndex((a) => a.approval_id === key);
      if (i !== -1 && run.approvals[i].decision !== null) return state; // first decision stands
      /** @type {'approve'|'deny'} */
      const decision = data.decision;
      run.approvals = i === -1
        ? [...run.approvals, { approval_id: key, prompt: '', decision }]
        : run.approvals.map((a, j) => (j === i ? { ...a, decision } : a));
      if (next.pending_approvals.some((p) => p.approval_id === key)) {
        next.pending_approvals = next.pending_approvals.filter((p) => p.approval_id !== key);
      }
      break;
    }
    default: // a terminal (RUN_EVENTS holds no other type)
      run.status = TERMINAL_STATUS[type];
      if (type === 'run.failed') run.error = optStr(data.error);
      if (next.current_run === runId) {
        next.status = 'idle';
        next.current_run = null;
      }
      if (next.pending_approvals.some((p) => p.run_id === runId)) {
        next.pending_approvals = next.pending_approvals.filter((p) => p.run_id !== runId);
      }
      break;
  }
  return next;
}

/**
 * Whether offset `a` is beyond offset `b`: the log has events after `b` up to `a`.
 * `b` null (nothing read) counts as "before the first event". An offset of another
 * epoch (another log) is beyond anything unless it is itself at seq 0.
 * @param {string|null|undefined} a
 * @param {string|null|undefined} b
 * @returns {boolean}
 */
export function offsetAfter(a, b) {
  const pa = parseOffset(a);
  if (!pa) return false;
  const pb = parseOffset(b);
  if (!pb || pb.epoch !== pa.epoch) return pa.seq > 0;
  return pa.seq > pb.seq;
}

/**
 * The later of two offsets of the same log; on different epochs `b` wins
 * (the caller passes the newer information second).
 * @param {string|null|undefined} a
 * @param {string|null|undefined} b
 * @returns {string|null}
 */
export function laterOffset(a, b) {
  const pa = parseOffset(a);
  const pb = parseOffset(b);
  if (!pb) return pa ? a : null;
  if (!pa || pa.epoch !== pb.epoch) return b;
  return pb.seq >= pa.seq ? b : a;
}

/**
 * Normalise a snapshot's state (fields may be absent in older gateways).
 * @param {string} sessionId
 * @param {object|null|undefined} state
 * @returns {SessionState}
 */
export function normalizeState(sessionId, state) {
  const s = { ...emptyState(sessionId), ...(state || {}) };
  s.runs = Array.isArray(s.runs) ? s.runs : [];
  s.pending_approvals = Array.isArray(s.pending_approvals) ? s.pending_approvals : [];
  return s;
}
