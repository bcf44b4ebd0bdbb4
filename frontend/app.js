// Viewer app: a sidebar of sessions and a transcript pane that is a pure
// projection of the GatewayClient's in-memory state for the viewed session.
// Event text is only ever written with textContent.

import { GatewayClient } from './gateway-client.js';

const $ = (selector) => document.querySelector(selector);
const els = {
  list: $('#session-list'),
  newSession: $('#new-session'),
  title: $('#session-title'),
  conn: $('#conn-status'),
  transcript: $('#transcript'),
  composer: $('#composer'),
  prompt: $('#prompt'),
  send: $('#send'),
  cancel: $('#cancel'),
  notice: $('#notice'),
};

const LIST_REFRESH_MS = 3000;
const PENDING_START_TIMEOUT_MS = 10000;

const client = new GatewayClient();

let current = null; // viewed session id
let sessions = []; // last GET /v1/sessions answer
let stickToBottom = true; // force scroll to bottom on the next render
let sending = false; // POST /runs in flight
let pendingStart = null; // {sid, runId, until}: accepted run whose run.started has not arrived
let cancelling = null; // run id whose cancel request is in flight
const inflightApprovals = new Set();
// Full re-renders would collapse <details> the user opened; remember them.
const openReasoning = new Set();

// ---- small DOM helpers ---------------------------------------------------

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function formatDuration(ms) {
  if (typeof ms !== 'number') return '';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

function summarizeArgs(args) {
  if (args == null) return '';
  let text;
  try { text = JSON.stringify(args); } catch { text = String(args); }
  if (text === '{}') return '';
  return text.length > 120 ? `${text.slice(0, 119)}…` : text;
}

let noticeTimer = null;
function showNotice(message, action) {
  clearTimeout(noticeTimer);
  els.notice.replaceChildren(h('span', null, message));
  if (action) {
    const btn = h('button', 'notice-action', action.label);
    btn.type = 'button';
    btn.addEventListener('click', () => { hideNotice(); action.run(); });
    els.notice.append(btn);
  } else {
    noticeTimer = setTimeout(hideNotice, 5000);
  }
  els.notice.hidden = false;
}

function hideNotice() {
  clearTimeout(noticeTimer);
  els.notice.hidden = true;
  els.notice.replaceChildren();
}

// ---- selection / URL -------------------------------------------------------

function sessionFromHash() {
  const m = /^#s=(.+)$/.exec(location.hash);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch { return null; }
}

function select(sid, { replace = false } = {}) {
  if (!sid) return;
  if (sid === current) {
    // Clicking the viewed session is the natural "try again" gesture.
    if (client.status === 'superseded' || client.status === 'offline') client.reconnect();
    return;
  }
  current = sid;
  const hash = `#s=${encodeURIComponent(sid)}`;
  if (location.hash !== hash) history[replace ? 'replaceState' : 'pushState'](null, '', hash);
  stickToBottom = true;
  cancelling = null;
  hideNotice();
  render();
  client.view(sid).catch((err) => showNotice(`Could not open session: ${err.message}`));
}

async function newSession({ replace = false } = {}) {
  els.newSession.disabled = true;
  try {
    const sid = await client.createSession();
    if (!sessions.some((s) => s.session_id === sid)) {
      sessions = [{ session_id: sid, status: 'idle', title: null }, ...sessions];
    }
    select(sid, { replace });
    els.prompt.focus();
  } catch (err) {
    showNotice(`Could not create a session: ${err.message}`);
  } finally {
    els.newSession.disabled = false;
  }
}

// ---- sidebar -----------------------------------------------------------------

let refreshing = false;
async function refreshSessions() {
  if (refreshing || document.visibilityState === 'hidden') return;
  refreshing = true;
  try {
    sessions = await client.listSessions();
    renderSessionList();
  } catch {
    // The connection indicator already tells the user; keep the old list.
  } finally {
    refreshing = false;
  }
}

const rowCache = new Map(); // session id -> row element, reused so focus survives refreshes

function renderSessionList() {
  const rows = sessions.slice();
  if (current && !rows.some((s) => s.session_id === current)) {
    rows.unshift({ session_id: current, status: 'idle', title: null });
  }
  const seen = new Set();
  rows.forEach((s, index) => {
    const sid = s.session_id;
    seen.add(sid);
    // The viewed session's live state is fresher than the 3 s poll.
    const live = sid === current ? client.getState(sid) : null;
    const status = live ? live.status : s.status;
    const title = (live ? live.title : s.title) || sid;

    let row = rowCache.get(sid);
    if (!row) {
      row = h('button', 'session-row');
      row.type = 'button';
      row.dataset.sessionId = sid;
      row.append(h('span', 'session-dot'), h('span', 'session-title'));
      row.firstChild.setAttribute('aria-hidden', 'true');
      rowCache.set(sid, row);
    }
    row.classList.toggle('running', status === 'running');
    row.classList.toggle('selected', sid === current);
    if (sid === current) row.setAttribute('aria-current', 'true');
    else row.removeAttribute('aria-current');
    row.title = status === 'running' ? `${title} (running)` : title;
    const label = row.querySelector('.session-title');
    if (label.textContent !== title) label.textContent = title;
    // Only move rows that are out of place: moving a node drops its focus.
    if (els.list.children[index] !== row) els.list.insertBefore(row, els.list.children[index] || null);
  });
  for (const [sid, row] of rowCache) {
    if (!seen.has(sid)) { row.remove(); rowCache.delete(sid); }
  }
}

// ---- transcript ----------------------------------------------------------------

function renderTool(tool) {
  const card = h('div', 'tool-card');
  card.dataset.toolCallId = tool.tool_call_id ?? '';
  card.dataset.status = tool.status;
  if (tool.is_error) card.classList.add('is-error');

  const head = h('div', 'tool-head');
  head.append(h('span', 'tool-name', tool.name || 'tool'));
  const args = h('code', 'tool-args', summarizeArgs(tool.args));
  try { args.title = JSON.stringify(tool.args, null, 2); } catch { /* not serialisable */ }
  head.append(args);
  const statusText = tool.status === 'running' ? 'running' : tool.is_error ? 'error' : 'completed';
  head.append(h('span', `tool-status tool-status-${statusText}`, statusText));
  if (tool.duration_ms != null) head.append(h('span', 'tool-duration', formatDuration(tool.duration_ms)));
  card.append(head);

  if (tool.output != null && tool.output !== '') {
    const out = typeof tool.output === 'string' ? tool.output : JSON.stringify(tool.output, null, 2);
    card.append(h('pre', 'tool-output', out));
  }
  return card;
}

function renderApproval(approval, state) {
  const id = approval.approval_id;
  const pending = approval.decision == null
    && state.pending_approvals.some((p) => p.approval_id === id);
  const card = h('div', 'approval-card');
  card.dataset.approvalId = id;
  card.dataset.state = approval.decision ?? (pending ? 'pending' : 'expired');
  card.append(h('div', 'approval-label', 'Approval requested'));
  card.append(h('div', 'approval-prompt', approval.prompt));

  if (approval.decision) {
    const decided = h('div', 'approval-decision', approval.decision === 'approve' ? 'Approved' : 'Denied');
    decided.dataset.decision = approval.decision;
    card.append(decided);
  } else if (pending) {
    const actions = h('div', 'approval-actions');
    const busy = inflightApprovals.has(id);
    for (const [decision, label] of [['approve', 'Approve'], ['deny', 'Deny']]) {
      const btn = h('button', decision, label);
      btn.type = 'button';
      btn.disabled = busy;
      btn.addEventListener('click', () => answer(id, decision));
      actions.append(btn);
    }
    card.append(actions);
  } else {
    card.append(h('div', 'approval-decision', 'No decision: the run ended'));
  }
  return card;
}

function renderRun(run, state) {
  const article = h('article', 'run');
  article.dataset.runId = run.run_id;
  article.dataset.status = run.status;
  if (run.input) article.append(h('div', 'user-input', run.input));

  const reply = h('div', 'reply');
  if (run.reasoning) {
    const key = `${state.session_id}\n${run.run_id}`;
    const details = h('details', 'reasoning');
    details.open = openReasoning.has(key);
    const thinking = run.status === 'running' && !run.text;
    details.append(h('summary', null, thinking ? 'Thinking…' : 'Reasoning'));
    details.append(h('div', 'reasoning-text', run.reasoning));
    details.addEventListener('toggle', () => {
      if (details.open) openReasoning.add(key); else openReasoning.delete(key);
    });
    reply.append(details);
  }
  for (const tool of run.tools) reply.append(renderTool(tool));
  for (const approval of run.approvals) reply.append(renderApproval(approval, state));
  if (run.text) reply.append(h('div', 'answer', run.text));

  if (run.status === 'running') {
    const waiting = !run.text || run.tools.some((t) => t.status === 'running');
    if (waiting) {
      const typing = h('div', 'typing');
      typing.setAttribute('aria-label', 'Agent is working');
      typing.append(h('span'), h('span'), h('span'));
      reply.append(typing);
    }
  } else if (run.status === 'failed') {
    const err = h('div', 'run-error');
    err.append(h('strong', null, 'Run failed'), h('span', null, run.error || 'unknown error'));
    reply.append(err);
  } else if (run.status === 'cancelled') {
    reply.append(h('div', 'run-cancelled', 'cancelled'));
  }
  article.append(reply);
  return article;
}

function renderTranscript(state) {
  const box = els.transcript;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  const column = h('div', 'column');
  if (!state) {
    column.append(h('div', 'placeholder', current ? 'Loading…' : 'No session selected'));
  } else if (state.runs.length === 0) {
    const empty = h('div', 'placeholder');
    empty.append(h('strong', null, 'New conversation'), h('span', null, 'Send a message to start a run.'));
    column.append(empty);
  } else {
    for (const run of state.runs) column.append(renderRun(run, state));
  }
  box.replaceChildren(column);
  if (atBottom || stickToBottom) box.scrollTop = box.scrollHeight;
  if (state) stickToBottom = false;
}

function isBusy(state) {
  if (pendingStart && (Date.now() > pendingStart.until
      || (state && state.runs.some((r) => r.run_id === pendingStart.runId)))) {
    pendingStart = null;
  }
  const waitingForStart = pendingStart && pendingStart.sid === current;
  return !state || state.status === 'running' || sending || Boolean(waitingForStart);
}

function renderComposer(state) {
  const wasDisabled = els.prompt.disabled;
  const busy = isBusy(state);
  els.prompt.disabled = busy;
  els.send.disabled = busy;
  const runId = state && state.status === 'running' ? state.current_run : null;
  els.cancel.hidden = !runId;
  els.cancel.disabled = Boolean(runId) && cancelling === runId;
  // Give focus back once a run ends, unless the user moved it elsewhere.
  if (wasDisabled && !busy && (document.activeElement === document.body || !document.activeElement)) {
    els.prompt.focus();
  }
}

function render() {
  const state = current ? client.getState(current) : null;
  const title = (state && state.title) || current || '';
  els.title.textContent = title;
  document.title = title ? `${title} · Agent Gateway` : 'Agent Gateway';
  renderTranscript(state);
  renderComposer(state);
  renderSessionList();
}

// Deltas arrive far faster than the screen refreshes; render once per frame.
let frame = 0;
function scheduleRender() {
  if (frame) return;
  frame = requestAnimationFrame(() => { frame = 0; render(); });
}

// ---- commands --------------------------------------------------------------------

async function send() {
  const sid = current;
  const input = els.prompt.value.trim();
  if (!sid || !input || isBusy(client.getState(sid))) return;
  sending = true;
  render();
  try {
    const result = await client.startRun(sid, input);
    if (result.ok) {
      els.prompt.value = '';
      autosize();
      pendingStart = { sid, runId: result.run_id, until: Date.now() + PENDING_START_TIMEOUT_MS };
      // Unblock the composer even if run.started never shows up.
      setTimeout(scheduleRender, PENDING_START_TIMEOUT_MS + 50);
    } else if (result.code === 'run_active') {
      showNotice('A run is already in progress in this session.');
    } else {
      showNotice(result.message || `Could not start the run (${result.code}).`);
    }
  } catch (err) {
    showNotice(`Could not start the run: ${err.message}`);
  } finally {
    sending = false;
    scheduleRender();
  }
}

async function cancelRun() {
  const sid = current;
  const state = sid && client.getState(sid);
  const runId = state && state.status === 'running' ? state.current_run : null;
  if (!runId || cancelling === runId) return;
  cancelling = runId;
  scheduleRender();
  try {
    const result = await client.cancel(sid, runId);
    if (!result.ok) showNotice(result.message || `Could not cancel (${result.code}).`);
  } catch (err) {
    showNotice(`Could not cancel: ${err.message}`);
  } finally {
    if (cancelling === runId) cancelling = null;
    scheduleRender();
  }
}

async function answer(approvalId, decision) {
  const sid = current;
  if (inflightApprovals.has(approvalId)) return;
  inflightApprovals.add(approvalId);
  scheduleRender();
  try {
    const result = await client.answerApproval(sid, approvalId, decision);
    if (!result.ok) {
      showNotice(result.code === 'approval_already_resolved'
        ? 'This approval was already answered.'
        : result.message || `Could not answer (${result.code}).`);
    }
  } catch (err) {
    showNotice(`Could not answer: ${err.message}`);
  } finally {
    inflightApprovals.delete(approvalId);
    scheduleRender();
  }
}

function autosize() {
  els.prompt.style.height = 'auto';
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 200)}px`;
}

// ---- wiring ------------------------------------------------------------------------

client.on('state', (sid) => { if (sid === current) scheduleRender(); });

client.on('status', (status) => {
  // 'superseded' is shown as offline: the stream is down until the user acts.
  const shown = status === 'superseded' ? 'offline' : status;
  els.conn.textContent = shown;
  els.conn.dataset.status = shown;
  els.conn.title = status === 'superseded'
    ? 'This session is being streamed in another tab'
    : `Stream ${shown}`;
  if (status === 'superseded') {
    showNotice('This session was opened in another tab.', {
      label: 'Reconnect here',
      run: () => client.reconnect(),
    });
  }
});

els.list.addEventListener('click', (ev) => {
  const row = ev.target.closest('.session-row');
  if (row) select(row.dataset.sessionId);
});

els.newSession.addEventListener('click', () => newSession());

els.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  send();
});

els.prompt.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    send();
  }
});
els.prompt.addEventListener('input', autosize);

els.cancel.addEventListener('click', () => cancelRun());

document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !ev.defaultPrevented) cancelRun();
});

// Back/forward between #s= entries; browsers differ in which of the two fires.
function followHash() {
  const sid = sessionFromHash();
  if (sid && sid !== current) select(sid, { replace: true });
}
window.addEventListener('hashchange', followHash);
window.addEventListener('popstate', followHash);

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') refreshSessions();
});
setInterval(refreshSessions, LIST_REFRESH_MS);

window.gatewayApp = { client, currentSession: () => current };

async function init() {
  const fromHash = sessionFromHash();
  if (fromHash) {
    select(fromHash, { replace: true });
    refreshSessions();
    return;
  }
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      sessions = await client.listSessions();
      break;
    } catch (err) {
      showNotice(`Could not load sessions, retrying: ${err.message}`);
      await new Promise((resolve) => { setTimeout(resolve, delay); });
    }
  }
  hideNotice();
  if (current) return; // the user picked or created one meanwhile
  if (sessions.length) select(sessions[0].session_id, { replace: true });
  else await newSession({ replace: true });
}

render();
init();
