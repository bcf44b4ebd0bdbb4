// Pure session fold and offset helpers shared by the tab client (gateway-client.js)
// and the hub (gateway-hub.js, run in a SharedWorker or in the leader tab).
// No DOM, no network, no globals: importable in Node, a worker or a page.
//
// The fold must agree with the gateway's (gateway/snapshot.py): a snapshot at offset X
// plus the events after X, folded here, equals the snapshot at the last of them.

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
