// Viewer app: a sidebar of sessions and a transcript pane that is a projection of the
// GatewayClient's state for the viewed session. The browser holds ONE stream for all its
// tabs (see gateway-client.js); switching sessions only changes subscriptions.
//
// Event text is written with textContent, except answers: markdown rendered by marked
// and always sanitized by DOMPurify before it touches innerHTML.

import { GatewayClient } from './gateway-client.js';
import { Marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.js';

const $ = (selector) => document.querySelector(selector);
const els = {
  app: $('.app'),
  list: $('#session-list'),
  newSession: $('#new-session'),
  title: $('#session-title'),
  conn: $('#conn-status'),
  transport: $('#transport-info'),
  transcript: $('#transcript'),
  jump: $('#jump'),
  composer: $('#composer'),
  prompt: $('#prompt'),
  send: $('#send'),
  cancel: $('#cancel'),
  toasts: $('#toasts'),
};

const LIST_REFRESH_MS = 30000; // safety net only: the activity feed drives the sidebar
const PENDING_START_TIMEOUT_MS = 10000;
const NEAR_BOTTOM_PX = 64;

// ---- access token --------------------------------------------------------------------
// A gateway with a token key wants a JWT. The viewer takes it from its URL (#token=<jwt> or
// ?token=<jwt>), removes it from the address bar (and so from history, bookmarks and
// screenshots) and keeps it in sessionStorage: this tab's reloads keep working, other tabs
// and later visits need their own link.

const TOKEN_KEY = 'gw.token';

/** The token in the page URL, removed from it; null when there is none. */
function takeTokenFromUrl() {
  let token = null;
  const url = new URL(location.href);
  if (url.searchParams.has('token')) {
    token = url.searchParams.get('token') || null;
    url.searchParams.delete('token');
  }
  // The hash also carries the session (#s=…): keep the other parts as they are.
  const parts = url.hash.replace(/^#/, '').split('&').filter(Boolean);
  const rest = parts.filter((p) => !p.startsWith('token='));
  if (rest.length !== parts.length) {
    const raw = parts.find((p) => p.startsWith('token=')).slice('token='.length);
    try { token = decodeURIComponent(raw) || token; } catch { token = raw || token; }
    url.hash = rest.length ? `#${rest.join('&')}` : '';
  }
  if (url.href !== location.href) history.replaceState(history.state, '', url.href);
  return token;
}

function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

function storeToken(token) {
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* storage disabled */ }
}

let accessToken = takeTokenFromUrl();
if (accessToken) storeToken(accessToken);
else accessToken = storedToken();

const params = new URLSearchParams(location.search);
const transportParam = params.get('transport');
const client = new GatewayClient({
  transport: transportParam === 'broadcast' || transportParam === 'shared-worker' ? transportParam : 'auto',
  accessToken: accessToken || undefined,
});

let current = null; // viewed session id
/** @type {Map<string, {session_id: string, status: string, title: string|null, run_id: string|null, last_offset: string|null, updated_ms: number}>} */
const sessions = new Map();
let sending = false; // POST /runs in flight
let pendingStart = null; // {sid, runId, until}: accepted run whose run.started has not arrived
const cancelling = new Set(); // run ids whose cancel request is in flight
const inflightApprovals = new Set();
let listStale = false; // activity may have been missed while hidden or disconnected
let lastListLoad = 0;

// ---- markdown ------------------------------------------------------------------------

const markdown = new Marked({ gfm: true, breaks: false, async: false });
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.getAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
  if (node.tagName === 'IMG') node.setAttribute('loading', 'lazy');
});

/** Markdown -> sanitized DOM fragment. Never inserts unsanitized HTML. */
function renderMarkdown(target, text) {
  let html;
  try {
    html = markdown.parse(text);
  } catch {
    target.textContent = text;
    return;
  }
  target.innerHTML = DOMPurify.sanitize(html, {
    FORBID_TAGS: ['style', 'form', 'input', 'textarea', 'select', 'button'],
    FORBID_ATTR: ['style'],
  });
}

// ---- small DOM helpers ---------------------------------------------------------------

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function button(className, label, title) {
  const b = h('button', className, label);
  b.type = 'button';
  if (title) {
    b.title = title;
    b.setAttribute('aria-label', title);
  }
  return b;
}

function formatDuration(ms) {
  if (typeof ms !== 'number') return '';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

function relativeTime(ms) {
  if (!ms) return '';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 45) return 'now';
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 86400) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

function summarizeArgs(args) {
  if (args == null) return '';
  let text;
  try { text = JSON.stringify(args); } catch { text = String(args); }
  if (text === '{}') return '';
  return text.length > 120 ? `${text.slice(0, 119)}…` : text;
}

function prettyJson(value) {
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

// ---- toasts --------------------------------------------------------------------------

/**
 * Non-blocking notice. `key` replaces an earlier toast with the same key.
 * @param {string} message
 * @param {{action?: {label: string, run: () => void}, timeout?: number, key?: string, tone?: string}} [opts]
 */
function toast(message, opts = {}) {
  if (opts.key) els.toasts.querySelector(`.toast[data-key="${CSS.escape(opts.key)}"]`)?.remove();
  const node = h('div', `toast${opts.tone ? ` toast-${opts.tone}` : ''}`);
  node.setAttribute('role', 'status');
  if (opts.key) node.dataset.key = opts.key;
  node.append(h('span', 'toast-text', message));
  const dismiss = () => {
    node.classList.add('leaving');
    setTimeout(() => node.remove(), 180);
  };
  if (opts.action) {
    const act = button('toast-action', opts.action.label);
    act.addEventListener('click', () => { dismiss(); opts.action.run(); });
    node.append(act);
  }
  const close = button('toast-close', '×', 'Dismiss');
  close.addEventListener('click', dismiss);
  node.append(close);
  els.toasts.append(node);
  while (els.toasts.children.length > 4) els.toasts.firstElementChild.remove();
  const timeout = opts.timeout ?? (opts.action ? 0 : 4500);
  if (timeout) setTimeout(dismiss, timeout);
  return { dismiss };
}

function dismissToast(key) {
  els.toasts.querySelector(`.toast[data-key="${CSS.escape(key)}"]`)?.remove();
}

// ---- selection / URL -----------------------------------------------------------------

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
  if (!sessions.has(sid)) {
    sessions.set(sid, { session_id: sid, status: 'idle', title: null, run_id: null, last_offset: null, updated_ms: Date.now() });
  }
  resetTranscript();
  render();
  client.view(sid).then(() => scheduleRender());
  if (matchMedia('(max-width: 700px)').matches) {
    els.list.querySelector(`.session-row[data-session-id="${CSS.escape(sid)}"]`)
      ?.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  }
}

async function newSession({ replace = false } = {}) {
  els.newSession.disabled = true;
  try {
    const sid = await client.createSession();
    if (!sessions.has(sid)) {
      sessions.set(sid, { session_id: sid, status: 'idle', title: null, run_id: null, last_offset: null, updated_ms: Date.now() });
    }
    select(sid, { replace });
    els.prompt.focus();
  } catch (err) {
    toast(`Could not create a session: ${err.message}`, { tone: 'error' });
  } finally {
    els.newSession.disabled = false;
  }
}

// ---- sidebar -------------------------------------------------------------------------

let loadingList = null;
function loadSessions() {
  if (loadingList) return loadingList;
  loadingList = (async () => {
    try {
      const list = await client.listSessions();
      const seen = new Set();
      for (const s of list) {
        seen.add(s.session_id);
        sessions.set(s.session_id, { ...sessions.get(s.session_id), ...s });
      }
      // Keep rows the list does not return only if we have reason to (the viewed one,
      // or one announced by the activity feed after the list was computed).
      for (const [sid, s] of sessions) {
        if (!seen.has(sid) && sid !== current && Date.now() - (s.updated_ms || 0) > 10000) sessions.delete(sid);
      }
      lastListLoad = Date.now();
      listStale = false;
      renderSessionList();
      return true;
    } finally {
      loadingList = null;
    }
  })();
  return loadingList;
}

function refreshSessionsIfVisible({ force = false } = {}) {
  if (document.visibilityState === 'hidden') {
    listStale = true;
    return;
  }
  if (!force && !listStale && Date.now() - lastListLoad < LIST_REFRESH_MS - 1000) return;
  loadSessions().catch(() => { listStale = true; });
}

function onActivity(entry) {
  const sid = entry.session_id;
  const prev = sessions.get(sid) || { session_id: sid, status: 'idle', title: null, run_id: null, last_offset: null, updated_ms: 0 };
  const next = { ...prev };
  for (const key of ['status', 'title', 'run_id', 'last_offset']) {
    if (entry[key] !== undefined) next[key] = entry[key];
  }
  next.updated_ms = typeof entry.ts === 'number' ? entry.ts : Date.now();
  sessions.set(sid, next);
  scheduleSidebar();
}

function sortedSessions() {
  return [...sessions.values()].sort((a, b) => (b.updated_ms || 0) - (a.updated_ms || 0));
}

/** Sidebar view of a session: the viewed one's live state is fresher than the feed. */
function rowInfo(s) {
  const live = s.session_id === current ? client.getState(s.session_id) : null;
  return {
    status: live ? live.status : s.status,
    title: (live ? live.title : s.title) || null,
    runId: live ? live.current_run : s.run_id,
  };
}

const rowCache = new Map(); // session id -> row element, reused so focus survives renders

function makeRow(sid) {
  const row = h('div', 'session-row');
  row.dataset.sessionId = sid;
  row.setAttribute('role', 'listitem');
  const main = button('row-main');
  const dot = h('span', 'session-dot');
  dot.setAttribute('aria-hidden', 'true');
  const text = h('span', 'row-text');
  text.append(h('span', 'session-title'), h('span', 'session-sub'));
  main.append(dot, text, h('span', 'session-time'));
  const stop = button('row-cancel', '', 'Stop this run');
  stop.append(h('span', 'stop-icon'));
  row.append(main, stop);
  return row;
}

function renderSessionList() {
  const list = sortedSessions();
  const seen = new Set();
  list.forEach((s, index) => {
    const sid = s.session_id;
    seen.add(sid);
    const info = rowInfo(s);
    let row = rowCache.get(sid);
    if (!row) {
      row = makeRow(sid);
      rowCache.set(sid, row);
    }
    const running = info.status === 'running';
    const active = sid === current;
    const unread = !active && client.isUnread(s);
    row.classList.toggle('running', running);
    row.classList.toggle('unread', unread);
    row.classList.toggle('active', active);
    const main = row.firstElementChild;
    if (active) main.setAttribute('aria-current', 'page'); else main.removeAttribute('aria-current');
    const title = info.title || 'New session';
    const label = row.querySelector('.session-title');
    if (label.textContent !== title) label.textContent = title;
    const sub = running ? 'Running…' : unread ? 'New activity' : sid;
    const subEl = row.querySelector('.session-sub');
    if (subEl.textContent !== sub) subEl.textContent = sub;
    const time = relativeTime(s.updated_ms);
    const timeEl = row.querySelector('.session-time');
    if (timeEl.textContent !== time) timeEl.textContent = time;
    main.title = `${title}${running ? ' (running)' : unread ? ' (unread)' : ''}\n${sid}`;
    const stop = row.querySelector('.row-cancel');
    stop.hidden = !running;
    stop.disabled = Boolean(info.runId && cancelling.has(info.runId));
    // Only move rows that are out of place: moving a node drops its focus.
    if (els.list.children[index] !== row) els.list.insertBefore(row, els.list.children[index] || null);
  });
  for (const [sid, row] of rowCache) {
    if (!seen.has(sid)) { row.remove(); rowCache.delete(sid); }
  }
  if (!list.length) {
    if (!els.list.querySelector('.list-empty')) els.list.append(h('div', 'list-empty', 'No sessions yet'));
  } else {
    els.list.querySelector('.list-empty')?.remove();
  }
}

let sidebarQueued = false;
function scheduleSidebar() {
  if (sidebarQueued) return;
  sidebarQueued = true;
  queueFrame(() => { sidebarQueued = false; renderSessionList(); });
}

// ---- transcript ----------------------------------------------------------------------

const openReasoning = new Set(); // `${sid}\n${run_id}` the user opened
const closedReasoning = new Set(); // ... or closed while it was streaming
const openTools = new Set(); // tool_call_id expanded by the user
let shownSession = null; // session the transcript DOM belongs to
let column = null;
/** @type {Map<string, object>} run id -> its DOM parts and the run object last drawn */
const runViews = new Map();
let emptyNode = null;
let stick = true; // keep the transcript pinned to the bottom

function resetTranscript() {
  shownSession = null;
  runViews.clear();
  column = null;
  emptyNode = null;
  stick = true;
  els.transcript.replaceChildren();
  els.jump.hidden = true;
}

function renderTool(tool) {
  const card = h('div', 'tool-card');
  card.dataset.toolCallId = tool.tool_call_id ?? '';
  card.dataset.status = tool.status;
  if (tool.is_error) card.classList.add('is-error');
  const statusText = tool.status === 'running' ? 'running' : tool.is_error ? 'error' : 'done';

  const details = h('details', 'tool-details');
  details.open = openTools.has(tool.tool_call_id);
  details.addEventListener('toggle', () => {
    if (details.open) openTools.add(tool.tool_call_id); else openTools.delete(tool.tool_call_id);
  });
  const head = h('summary', 'tool-head');
  const icon = h('span', `tool-icon tool-icon-${statusText}`);
  icon.setAttribute('aria-hidden', 'true');
  head.append(icon, h('span', 'tool-name', tool.name || 'tool'), h('code', 'tool-args', summarizeArgs(tool.args)));
  head.append(h('span', `tool-status tool-status-${statusText}`, statusText));
  const dur = h('span', 'tool-duration', tool.duration_ms != null ? formatDuration(tool.duration_ms) : '');
  head.append(dur);
  details.append(head);

  const body = h('div', 'tool-body');
  body.append(h('div', 'tool-section-label', 'Arguments'), h('pre', 'tool-args-full', prettyJson(tool.args ?? {})));
  if (tool.output != null && tool.output !== '') {
    const out = typeof tool.output === 'string' ? tool.output : prettyJson(tool.output);
    body.append(h('div', 'tool-section-label', tool.is_error ? 'Error' : 'Output'), h('pre', 'tool-output', out));
  } else if (tool.status === 'running') {
    body.append(h('div', 'tool-section-label', 'Waiting for the result…'));
  }
  details.append(body);
  card.append(details);
  return card;
}

function renderApproval(approval, state) {
  const id = approval.approval_id;
  const pending = approval.decision == null
    && state.pending_approvals.some((p) => p.approval_id === id);
  const card = h('div', 'approval-card');
  card.dataset.approvalId = id;
  card.dataset.state = approval.decision ?? (pending ? 'pending' : 'expired');
  const head = h('div', 'approval-head');
  const icon = h('span', 'approval-icon');
  icon.setAttribute('aria-hidden', 'true');
  head.append(icon, h('span', 'approval-label', pending ? 'Approval needed' : 'Approval'));
  card.append(head, h('div', 'approval-prompt', approval.prompt));

  if (approval.decision) {
    const decided = h('div', 'approval-decision', approval.decision === 'approve' ? 'Approved' : 'Denied');
    decided.dataset.decision = approval.decision;
    card.append(decided);
  } else if (pending) {
    const actions = h('div', 'approval-actions');
    const busy = inflightApprovals.has(id);
    for (const [decision, label] of [['approve', 'Approve'], ['deny', 'Deny']]) {
      const btn = button(decision, label);
      btn.disabled = busy;
      btn.addEventListener('click', () => answer(state.session_id, id, decision));
      actions.append(btn);
    }
    card.append(actions);
  } else {
    card.append(h('div', 'approval-decision', 'No decision: the run ended'));
  }
  return card;
}

function createRunView(run) {
  const article = h('article', 'run');
  article.dataset.runId = run.run_id;
  const user = h('div', 'user-input');
  const reply = h('div', 'reply');
  const avatar = h('div', 'reply-avatar');
  avatar.setAttribute('aria-hidden', 'true');
  const body = h('div', 'reply-body');
  const parts = {
    reasoning: h('div', 'slot-reasoning'),
    tools: h('div', 'slot-tools'),
    approvals: h('div', 'slot-approvals'),
    answer: h('div', 'answer markdown'),
    footer: h('div', 'slot-footer'),
  };
  parts.answer.hidden = true;
  body.append(parts.reasoning, parts.tools, parts.approvals, parts.answer, parts.footer);
  reply.append(avatar, body);
  article.append(user, reply);
  return { el: article, user, parts, run: null, pending: null, text: null, details: null, footerKey: null };
}

function updateReasoning(view, run, sid) {
  const key = `${sid}\n${run.run_id}`;
  if (!run.reasoning) {
    view.parts.reasoning.replaceChildren();
    view.details = null;
    return;
  }
  const thinking = run.status === 'running' && !run.text && !run.tools.length;
  if (!view.details) {
    const details = h('details', 'reasoning');
    const summary = h('summary');
    summary.append(h('span', 'reasoning-label'), h('span', 'reasoning-chars'));
    details.append(summary, h('div', 'reasoning-text'));
    details.expected = false;
    details.addEventListener('toggle', () => {
      // Our own open/close (below) also fires 'toggle', later; only a change we did
      // not make is the user's choice.
      if (details.open === details.expected) return;
      details.expected = details.open;
      if (details.open) { openReasoning.add(key); closedReasoning.delete(key); } else { openReasoning.delete(key); closedReasoning.add(key); }
    });
    view.parts.reasoning.replaceChildren(details);
    view.details = details;
  }
  const d = view.details;
  // While the agent is only thinking, show its reasoning; fold it away once it acts,
  // unless the user chose otherwise.
  const wantOpen = openReasoning.has(key) || (thinking && !closedReasoning.has(key));
  if (d.open !== wantOpen) {
    d.expected = wantOpen;
    d.open = wantOpen;
  }
  d.classList.toggle('thinking', thinking);
  d.querySelector('.reasoning-label').textContent = thinking ? 'Thinking…' : 'Reasoning';
  const words = run.reasoning.trim().split(/\s+/).length;
  d.querySelector('.reasoning-chars').textContent = `${words} word${words === 1 ? '' : 's'}`;
  const text = d.querySelector('.reasoning-text');
  if (text.textContent !== run.reasoning) text.textContent = run.reasoning;
}

function updateFooter(view, run) {
  const waiting = run.status === 'running' && (!run.text || run.tools.some((t) => t.status === 'running'));
  view.parts.answer.classList.toggle('streaming', run.status === 'running' && !waiting);
  // Rebuild only when what the footer shows changes: not on every delta, which would
  // restart the typing animation each frame.
  const key = `${run.status}|${waiting}|${Boolean(run.text)}|${run.error}`;
  if (view.footerKey === key) return;
  view.footerKey = key;
  const f = view.parts.footer;
  f.replaceChildren();
  if (waiting) {
    const typing = h('div', 'typing');
    typing.setAttribute('aria-label', 'Agent is working');
    typing.append(h('span'), h('span'), h('span'));
    f.append(typing);
  } else if (run.status === 'failed') {
    const err = h('div', 'run-error');
    err.append(h('strong', null, 'Run failed'), h('span', null, run.error || 'unknown error'));
    f.append(err);
  } else if (run.status === 'cancelled') {
    f.append(h('div', 'run-cancelled', 'Cancelled'));
  }
  if (run.status !== 'running' && run.text) {
    const actions = h('div', 'run-actions');
    const copy = button('copy-answer', 'Copy', 'Copy the answer as markdown');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(view.run.text);
        copy.textContent = 'Copied';
        setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
      } catch {
        toast('Could not copy to the clipboard');
      }
    });
    actions.append(copy);
    f.append(actions);
  }
}

function updateRunView(view, run, state) {
  const pendingChanged = view.pending !== state.pending_approvals;
  if (view.run === run && !pendingChanged) return;
  const prev = view.run;
  view.el.dataset.status = run.status;
  if (!prev || prev.input !== run.input) {
    view.user.textContent = run.input;
    view.user.hidden = !run.input;
  }
  if (!prev || prev.reasoning !== run.reasoning || prev.status !== run.status
      || prev.tools !== run.tools || (!prev.text) !== (!run.text)) {
    updateReasoning(view, run, state.session_id);
  }
  if (!prev || prev.tools !== run.tools) {
    view.parts.tools.replaceChildren(...run.tools.map(renderTool));
  }
  if (!prev || prev.approvals !== run.approvals || pendingChanged) {
    view.parts.approvals.replaceChildren(...run.approvals.map((a) => renderApproval(a, state)));
  }
  if (view.text !== run.text) {
    view.text = run.text;
    view.parts.answer.hidden = !run.text;
    if (run.text) renderMarkdown(view.parts.answer, run.text);
    else view.parts.answer.replaceChildren();
  }
  updateFooter(view, run);
  view.run = run;
  view.pending = state.pending_approvals;
}

function emptyPlaceholder() {
  const box = h('div', 'placeholder');
  box.append(h('div', 'placeholder-icon'), h('strong', null, 'New conversation'));
  box.append(h('span', null, 'Ask the agent about this project. It reasons, searches the docs with a tool and streams its answer.'));
  const ideas = h('div', 'suggestions');
  for (const idea of [
    'How does reconnect resume from the stored offset?',
    'What happens to a slow consumer?',
    'Search the docs for replica, with approval',
  ]) {
    const b = button('suggestion', idea);
    b.addEventListener('click', () => {
      els.prompt.value = idea;
      autosize();
      renderComposer(client.getState(current));
      els.prompt.focus();
    });
    ideas.append(b);
  }
  box.append(ideas);
  return box;
}

function renderTranscript(state) {
  const box = els.transcript;
  if (shownSession !== current || !column) {
    resetTranscript();
    shownSession = current;
    column = h('div', 'column');
    box.append(column);
  }
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
  if (!state) {
    if (!column.querySelector('.placeholder.loading')) {
      const loading = h('div', 'placeholder loading');
      loading.append(h('div', 'spinner'), h('span', null, current ? 'Loading…' : 'No session selected'));
      column.replaceChildren(loading);
      runViews.clear();
      emptyNode = null;
    }
    return;
  }
  column.querySelector('.placeholder.loading')?.remove();
  if (!state.runs.length) {
    if (!emptyNode) {
      emptyNode = emptyPlaceholder();
      column.replaceChildren(emptyNode);
      runViews.clear();
    }
    return;
  }
  if (emptyNode) { emptyNode.remove(); emptyNode = null; }

  const live = new Set();
  state.runs.forEach((run, index) => {
    live.add(run.run_id);
    let view = runViews.get(run.run_id);
    if (!view) {
      view = createRunView(run);
      runViews.set(run.run_id, view);
    }
    updateRunView(view, run, state);
    if (column.children[index] !== view.el) column.insertBefore(view.el, column.children[index] || null);
  });
  for (const [id, view] of runViews) {
    if (!live.has(id)) { view.el.remove(); runViews.delete(id); }
  }
  if (stick || nearBottom) {
    box.scrollTop = box.scrollHeight;
    stick = false;
    els.jump.hidden = true;
  } else {
    els.jump.hidden = false;
  }
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
  const busy = isBusy(state);
  els.prompt.disabled = !current;
  els.send.disabled = busy || !els.prompt.value.trim();
  const runId = state && state.status === 'running' ? state.current_run : null;
  els.cancel.hidden = !runId;
  els.cancel.disabled = Boolean(runId) && cancelling.has(runId);
  els.composer.classList.toggle('busy', busy);
}

function renderHeader(state) {
  const title = (state && state.title) || (current ? 'New session' : '');
  if (els.title.textContent !== title) els.title.textContent = title;
  els.title.title = current || '';
  const needsApproval = state && state.pending_approvals.length > 0;
  const base = title ? `${title} · Agent Gateway` : 'Agent Gateway';
  document.title = needsApproval ? `Approval needed · ${base}` : base;
}

function render() {
  const state = current ? client.getState(current) : null;
  renderHeader(state);
  renderTranscript(state);
  renderComposer(state);
  renderSessionList();
}

// Deltas arrive far faster than the screen refreshes: render once per frame. Hidden
// tabs get no animation frames, so a timer covers them (local work only, no requests).
function queueFrame(fn) {
  let done = false;
  const run = () => { if (!done) { done = true; fn(); } };
  requestAnimationFrame(run);
  setTimeout(run, document.visibilityState === 'hidden' ? 1000 : 100);
}

let frameQueued = false;
function scheduleRender() {
  if (frameQueued) return;
  frameQueued = true;
  queueFrame(() => { frameQueued = false; render(); });
}

// ---- commands ------------------------------------------------------------------------

async function send() {
  const sid = current;
  const input = els.prompt.value.trim();
  if (!sid || !input) return;
  const state = client.getState(sid);
  if (isBusy(state)) {
    if (state && state.status === 'running') toast('A run is in progress. Press Esc to stop it.', { key: 'busy' });
    return;
  }
  sending = true;
  render();
  try {
    const result = await client.startRun(sid, input);
    if (result.ok) {
      els.prompt.value = '';
      autosize();
      stick = true;
      pendingStart = { sid, runId: result.run_id, until: Date.now() + PENDING_START_TIMEOUT_MS };
      // Unblock the composer even if run.started never shows up.
      setTimeout(scheduleRender, PENDING_START_TIMEOUT_MS + 50);
    } else if (result.code === 'run_active') {
      toast('A run is already in progress in this session.', { key: 'busy' });
    } else {
      toast(result.message || `Could not start the run (${result.code}).`, { tone: 'error' });
    }
  } catch (err) {
    toast(`Could not start the run: ${err.message}`, { tone: 'error' });
  } finally {
    sending = false;
    scheduleRender();
  }
}

async function cancelSession(sid) {
  let runId = null;
  const state = client.getState(sid);
  if (state) runId = state.status === 'running' ? state.current_run : null;
  if (!runId) runId = sessions.get(sid)?.run_id ?? null;
  if (!runId && !state) {
    try { runId = (await client.getSession(sid))?.run_id ?? null; } catch { /* below */ }
  }
  if (!runId || cancelling.has(runId)) return;
  cancelling.add(runId);
  scheduleRender();
  try {
    const result = await client.cancel(sid, runId);
    if (!result.ok) toast(result.message || `Could not cancel (${result.code}).`);
  } catch (err) {
    toast(`Could not cancel: ${err.message}`, { tone: 'error' });
  } finally {
    cancelling.delete(runId);
    scheduleRender();
  }
}

function cancelRun() {
  const state = current && client.getState(current);
  if (!state || state.status !== 'running') return false;
  cancelSession(current);
  return true;
}

async function answer(sid, approvalId, decision) {
  if (inflightApprovals.has(approvalId)) return;
  inflightApprovals.add(approvalId);
  scheduleRender();
  try {
    const result = await client.answerApproval(sid, approvalId, decision);
    if (!result.ok) {
      toast(result.code === 'approval_already_resolved'
        ? 'Already answered elsewhere'
        : result.code === 'approval_not_found'
          ? 'This approval is no longer pending'
          : result.message || `Could not answer (${result.code}).`, { key: `approval-${approvalId}` });
    }
  } catch (err) {
    toast(`Could not answer: ${err.message}`, { tone: 'error' });
  } finally {
    inflightApprovals.delete(approvalId);
    scheduleRender();
  }
}

function autosize() {
  els.prompt.style.height = 'auto';
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 220)}px`;
}

// ---- connection status ---------------------------------------------------------------

let wasLive = false;
function showStatus(status) {
  // #conn-status is exactly live | reconnecting | offline; 'superseded' is shown as
  // offline with a notice (the hub retries once by itself).
  const shown = status === 'superseded' ? 'offline' : status;
  els.conn.textContent = shown;
  els.conn.dataset.status = shown;
  els.conn.title = status === 'superseded'
    ? 'Another window took over this browser\'s stream'
    : `Stream ${shown} · ${client.transport || 'connecting'}`;
  if (status === 'superseded') {
    toast('Another window took over this browser\'s live stream.', {
      key: 'conn',
      action: { label: 'Reconnect', run: () => client.reconnect() },
    });
  } else if (status === 'live') {
    dismissToast('conn');
    // Activity frames sent while we were disconnected are not replayed.
    if (listStale && lastListLoad) refreshSessionsIfVisible({ force: true });
    wasLive = true;
  } else if (wasLive) {
    listStale = true;
  }
}

function showTransport() {
  const names = {
    'shared-worker': 'shared worker',
    'broadcast-leader': 'this tab leads',
    'broadcast-follower': 'via leader tab',
  };
  els.transport.textContent = `1 stream per browser · ${names[client.transport] || '…'}`;
  els.transport.title = `transport: ${client.transport}\nmux: ${client.muxId || '(none yet)'}`;
}

// ---- wiring --------------------------------------------------------------------------

client.on('state', (sid) => { if (sid === current) scheduleRender(); });
client.on('activity', onActivity);
client.on('read', scheduleSidebar);
client.on('status', showStatus);
client.on('transport', showTransport);
client.on('mux', showTransport);
client.on('auth', (problem) => {
  if (!problem) {
    dismissToast('auth');
    return;
  }
  const why = {
    token_expired: 'Your access token has expired.',
    unauthorized: 'This gateway needs an access token.',
    invalid_token: 'The gateway does not accept this access token.',
    forbidden: 'Your access token does not allow viewing sessions.',
  }[problem.code] || `The gateway refuses access (${problem.code}).`;
  toast(`${why} Open the viewer with a new link ending in #token=<jwt>; retrying meanwhile…`,
    { key: 'auth', tone: 'error', timeout: 0 });
});
client.on('error', ({ sessionId, message, fatal }) => {
  if (sessionId !== current) return;
  toast(fatal ? `Cannot open this session: ${message}` : `Could not load this session (${message}); retrying…`,
    { key: 'load', tone: 'error' });
});

els.list.addEventListener('click', (ev) => {
  const stop = ev.target.closest('.row-cancel');
  const row = ev.target.closest('.session-row');
  if (!row) return;
  if (stop) {
    ev.stopPropagation();
    cancelSession(row.dataset.sessionId);
    return;
  }
  select(row.dataset.sessionId);
});

els.newSession.addEventListener('click', () => newSession());

els.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  send();
});

els.prompt.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    send();
  }
});
els.prompt.addEventListener('input', () => {
  autosize();
  renderComposer(current ? client.getState(current) : null);
});

els.cancel.addEventListener('click', () => cancelRun());

document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !ev.defaultPrevented && !ev.isComposing) {
    if (cancelRun()) ev.preventDefault();
  }
});

els.transcript.addEventListener('scroll', () => {
  const box = els.transcript;
  if (box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX) els.jump.hidden = true;
}, { passive: true });
els.jump.addEventListener('click', () => {
  els.transcript.scrollTo({ top: els.transcript.scrollHeight, behavior: 'smooth' });
  els.jump.hidden = true;
});

// Back/forward between #s= entries; browsers differ in which of the two fires.
function followHash() {
  const token = takeTokenFromUrl(); // a new link pasted into this tab
  if (token && token !== accessToken) {
    accessToken = token;
    storeToken(token);
    client.setAccessToken(token);
    if (wakeInit) wakeInit(); // the first load is waiting to retry: now
    else refreshSessionsIfVisible({ force: true });
  }
  const sid = sessionFromHash();
  if (sid && sid !== current) select(sid, { replace: true });
}
window.addEventListener('hashchange', followHash);
window.addEventListener('popstate', followHash);

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    refreshSessionsIfVisible();
    scheduleRender();
  }
});
// Safety net only, and only while visible: the activity feed keeps the sidebar fresh.
setInterval(() => refreshSessionsIfVisible(), LIST_REFRESH_MS);
// Relative times in the sidebar; local work only.
setInterval(() => { if (document.visibilityState === 'visible') scheduleSidebar(); }, 30000);

window.addEventListener('pageshow', (ev) => {
  if (ev.persisted) {
    // Back from the BFCache: the client re-registers with the hub; the list may be old.
    listStale = true;
    refreshSessionsIfVisible({ force: true });
  }
});

window.gatewayApp = { client, currentSession: () => current };

let wakeInit = null; // ends init()'s wait before it retries loading the sessions

async function init() {
  // Until the hub answers, we are connecting: say so rather than flash "offline".
  showStatus(client.status === 'offline' ? 'reconnecting' : client.status);
  showTransport();
  const fromHash = sessionFromHash();
  if (fromHash) select(fromHash, { replace: true });
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      await loadSessions();
      dismissToast('list');
      break;
    } catch (err) {
      toast(`Could not load sessions, retrying: ${err.message}`, { key: 'list', tone: 'error', timeout: delay });
      await new Promise((resolve) => {
        wakeInit = resolve;
        setTimeout(resolve, delay);
      });
      wakeInit = null;
    }
  }
  if (current) return; // from the hash, or the user picked or created one meanwhile
  const first = sortedSessions()[0];
  if (first) select(first.session_id, { replace: true });
  else await newSession({ replace: true });
}

render();
init();
