// @ts-check
// Viewer app: a sidebar of sessions and a transcript pane that is a projection of the
// GatewayClient's state for the viewed session. The browser holds ONE stream for all its
// tabs (see gateway-client.js); switching sessions only changes subscriptions.
//
// Event text is written with textContent, except answers: markdown rendered by marked
// and always sanitized by DOMPurify before it touches the DOM. A streaming answer is
// rendered incrementally (markdown-stream.js): only its last blocks are parsed again.

import { GatewayClient } from './gateway-client.js';
import { MarkdownStream } from './markdown-stream.js';
import { Marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.js';

/**
 * @typedef {import('./gateway-fold.js').SessionState} SessionState
 * @typedef {import('./gateway-fold.js').RunState} RunState
 * @typedef {import('./gateway-fold.js').ToolState} ToolState
 * @typedef {import('./gateway-fold.js').ApprovalState} ApprovalState
 * @typedef {{session_id: string, status: string, title: string|null, run_id: string|null,
 *   last_offset: string|null, updated_ms: number}} SessionRow a sidebar entry
 * @typedef {HTMLDetailsElement & {expected?: boolean}} ReasoningDetails the open state we
 *   set last (a 'toggle' to another state is the user's)
 * @typedef {{stream: MarkdownStream, done: string, nodes: number}} AnswerView the answer's
 *   markdown: its stream, the HTML of its final blocks, and how many nodes they are
 * @typedef {{el: HTMLElement, user: HTMLElement, parts: {reasoning: HTMLElement,
 *   tools: HTMLElement, approvals: HTMLElement, answer: HTMLElement, footer: HTMLElement},
 *   run: RunState|null, pending: SessionState['pending_approvals']|null, text: string|null,
 *   answerView: AnswerView, details: ReasoningDetails|null, footerKey: string|null}} RunView
 *   one run's DOM parts and the run object last drawn
 */

/** @param {string} selector */
const $ = (selector) => /** @type {HTMLElement} */ (document.querySelector(selector));
const els = {
  app: $('.app'),
  list: $('#session-list'),
  newSession: /** @type {HTMLButtonElement} */ ($('#new-session')),
  title: $('#session-title'),
  conn: $('#conn-status'),
  transport: $('#transport-info'),
  transcript: $('#transcript'),
  jump: /** @type {HTMLButtonElement} */ ($('#jump')),
  composer: /** @type {HTMLFormElement} */ ($('#composer')),
  prompt: /** @type {HTMLTextAreaElement} */ ($('#prompt')),
  send: /** @type {HTMLButtonElement} */ ($('#send')),
  cancel: /** @type {HTMLButtonElement} */ ($('#cancel')),
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

/** @param {string} token */
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

/** @type {string|null} viewed session id */
let current = null;
/** @type {Map<string, SessionRow>} */
const sessions = new Map();
let sending = false; // POST /runs in flight
/** @type {{sid: string, runId: string, until: number}|null} accepted run whose run.started has not arrived */
let pendingStart = null;
/** @type {Set<string>} run ids whose cancel request is in flight */
const cancelling = new Set();
/** @type {Set<string>} approval ids whose answer is in flight */
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

const PURIFY = {
  FORBID_TAGS: ['style', 'form', 'input', 'textarea', 'select', 'button'],
  FORBID_ATTR: ['style'],
};

/**
 * @param {string} html
 * @returns {string}
 */
function sanitize(html) {
  return DOMPurify.sanitize(html, PURIFY);
}

/** @returns {AnswerView} */
function newAnswerView() {
  return { stream: new MarkdownStream(markdown), done: '', nodes: 0 };
}

/**
 * Markdown -> sanitized DOM, for a text that grows (a streaming answer): the nodes of
 * blocks no later text can change are kept, only the last blocks are parsed and replaced.
 * The DOM is the same as rendering the whole text at once. Never inserts unsanitized HTML.
 * @param {HTMLElement} target
 * @param {AnswerView} view what was rendered into `target` so far
 * @param {string} text
 */
function renderMarkdown(target, view, text) {
  let u;
  try {
    u = view.stream.update(text);
  } catch {
    target.textContent = text;
    Object.assign(view, newAnswerView());
    return;
  }
  if (u.reset) {
    view.done = '';
    view.nodes = 0;
  }
  view.done += u.done;
  if (view.stream.rawHtml) {
    // Raw HTML may span blocks (an unclosed tag): sanitize and parse it all at once.
    target.innerHTML = sanitize(view.done + u.rest);
    view.nodes = 0;
    return;
  }
  // Keep the nodes of final blocks, replace the rest.
  while (target.childNodes.length > view.nodes) target.lastChild.remove();
  if (u.done) {
    target.insertAdjacentHTML('beforeend', sanitize(u.done));
    view.nodes = target.childNodes.length;
  }
  if (u.rest) target.insertAdjacentHTML('beforeend', sanitize(u.rest));
}

// ---- small DOM helpers ---------------------------------------------------------------

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {string|null} [className]
 * @param {string|null} [text]
 * @returns {HTMLElementTagNameMap[K]}
 */
function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/**
 * @param {string} className
 * @param {string} [label]
 * @param {string} [title] also its aria-label
 */
function button(className, label, title) {
  const b = h('button', className, label);
  b.type = 'button';
  if (title) {
    b.title = title;
    b.setAttribute('aria-label', title);
  }
  return b;
}

/** @param {number|null} ms */
function formatDuration(ms) {
  if (typeof ms !== 'number') return '';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

/** @param {number} ms */
function relativeTime(ms) {
  if (!ms) return '';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 45) return 'now';
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 86400) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

/** @param {unknown} args */
function summarizeArgs(args) {
  if (args == null) return '';
  let text;
  try { text = JSON.stringify(args); } catch { text = String(args); }
  if (text === '{}') return '';
  return text.length > 120 ? `${text.slice(0, 119)}…` : text;
}

/** @param {unknown} value */
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

/** @param {string} key */
function dismissToast(key) {
  els.toasts.querySelector(`.toast[data-key="${CSS.escape(key)}"]`)?.remove();
}

// ---- selection / URL -----------------------------------------------------------------

function sessionFromHash() {
  const m = /^#s=(.+)$/.exec(location.hash);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch { return null; }
}

/**
 * View `sid` in the transcript pane.
 * @param {string} sid
 * @param {{replace?: boolean}} [opts] replace the history entry rather than push one
 */
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

/** @type {Promise<boolean>|null} */
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

/** @param {{force?: boolean}} [opts] also when the list is recent */
function refreshSessionsIfVisible({ force = false } = {}) {
  if (document.visibilityState === 'hidden') {
    listStale = true;
    return;
  }
  if (!force && !listStale && Date.now() - lastListLoad < LIST_REFRESH_MS - 1000) return;
  loadSessions().catch(() => { listStale = true; });
}

/** @param {{session_id: string, ts?: number, [field: string]: any}} entry */
function onActivity(entry) {
  const sid = entry.session_id;
  const prev = sessions.get(sid) || { session_id: sid, status: 'idle', title: null, run_id: null, last_offset: null, updated_ms: 0 };
  const next = { ...prev };
  for (const key of /** @type {const} */ (['status', 'title', 'run_id', 'last_offset'])) {
    if (entry[key] !== undefined) next[key] = entry[key];
  }
  next.updated_ms = typeof entry.ts === 'number' ? entry.ts : Date.now();
  sessions.set(sid, next);
  scheduleSidebar();
}

function sortedSessions() {
  return [...sessions.values()].sort((a, b) => (b.updated_ms || 0) - (a.updated_ms || 0));
}

/**
 * Sidebar view of a session: the viewed one's live state is fresher than the feed.
 * @param {SessionRow} s
 */
function rowInfo(s) {
  const live = s.session_id === current ? client.getState(s.session_id) : null;
  return {
    status: live ? live.status : s.status,
    title: (live ? live.title : s.title) || null,
    runId: live ? live.current_run : s.run_id,
  };
}

/** @type {Map<string, HTMLElement>} session id -> row element, reused so focus survives renders */
const rowCache = new Map();

/** @param {string} sid */
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
    const main = /** @type {HTMLButtonElement} */ (row.firstElementChild);
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
    const stop = /** @type {HTMLButtonElement} */ (row.querySelector('.row-cancel'));
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

/** @type {Set<string>} `${sid}\n${run_id}` the user opened */
const openReasoning = new Set();
/** @type {Set<string>} ... or closed while it was streaming */
const closedReasoning = new Set();
/** @type {Set<string>} tool_call_id expanded by the user */
const openTools = new Set();
/** @type {string|null} session the transcript DOM belongs to */
let shownSession = null;
/** @type {HTMLElement|null} */
let column = null;
/** @type {Map<string, RunView>} run id -> its DOM parts and the run object last drawn */
const runViews = new Map();
/** @type {HTMLElement|null} */
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

/** @param {ToolState} tool */
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

/**
 * @param {ApprovalState} approval
 * @param {SessionState} state
 */
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
    for (const [decision, label] of /** @type {const} */ ([['approve', 'Approve'], ['deny', 'Deny']])) {
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

/**
 * @param {RunState} run
 * @returns {RunView}
 */
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
  return {
    el: article, user, parts, run: null, pending: null, text: null, answerView: newAnswerView(),
    details: null, footerKey: null,
  };
}

/**
 * @param {RunView} view
 * @param {RunState} run
 * @param {string} sid
 */
function updateReasoning(view, run, sid) {
  const key = `${sid}\n${run.run_id}`;
  if (!run.reasoning) {
    view.parts.reasoning.replaceChildren();
    view.details = null;
    return;
  }
  const thinking = run.status === 'running' && !run.text && !run.tools.length;
  if (!view.details) {
    /** @type {ReasoningDetails} */
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

/**
 * @param {RunView} view
 * @param {RunState} run
 */
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

/**
 * @param {RunView} view
 * @param {RunState} run
 * @param {SessionState} state
 */
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
    if (run.text) {
      renderMarkdown(view.parts.answer, view.answerView, run.text);
    } else {
      view.parts.answer.replaceChildren();
      view.answerView = newAnswerView();
    }
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

/** @param {SessionState|null} state */
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

/** @param {SessionState|null} state */
function isBusy(state) {
  if (pendingStart && (Date.now() > pendingStart.until
      || (state && state.runs.some((r) => r.run_id === pendingStart.runId)))) {
    pendingStart = null;
  }
  const waitingForStart = pendingStart && pendingStart.sid === current;
  return !state || state.status === 'running' || sending || Boolean(waitingForStart);
}

/** @param {SessionState|null} state */
function renderComposer(state) {
  const busy = isBusy(state);
  els.prompt.disabled = !current;
  els.send.disabled = busy || !els.prompt.value.trim();
  const runId = state && state.status === 'running' ? state.current_run : null;
  els.cancel.hidden = !runId;
  els.cancel.disabled = Boolean(runId) && cancelling.has(runId);
  els.composer.classList.toggle('busy', busy);
}

/** @param {SessionState|null} state */
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
/** @param {() => void} fn */
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

/** @param {string} sid */
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

/**
 * @param {string} sid
 * @param {string} approvalId
 * @param {'approve'|'deny'} decision
 */
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
/** @param {'live'|'reconnecting'|'offline'|'superseded'} status */
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

client.on('state', (/** @type {string} */ sid) => { if (sid === current) scheduleRender(); });
client.on('activity', onActivity);
client.on('read', scheduleSidebar);
client.on('status', showStatus);
client.on('transport', showTransport);
client.on('mux', showTransport);
client.on('auth', (/** @type {import('./gateway-client.js').AuthProblem|null} */ problem) => {
  if (!problem) {
    dismissToast('auth');
    return;
  }
  const why = /** @type {Record<string, string>} */ ({
    token_expired: 'Your access token has expired.',
    unauthorized: 'This gateway needs an access token.',
    invalid_token: 'The gateway does not accept this access token.',
    forbidden: 'Your access token does not allow viewing sessions.',
  })[problem.code] || `The gateway refuses access (${problem.code}).`;
  toast(`${why} Open the viewer with a new link ending in #token=<jwt>; retrying meanwhile…`,
    { key: 'auth', tone: 'error', timeout: 0 });
});
client.on('error', (/** @type {import('./gateway-client.js').SessionError} */ { sessionId, message, fatal }) => {
  if (sessionId !== current) return;
  toast(fatal ? `Cannot open this session: ${message}` : `Could not load this session (${message}); retrying…`,
    { key: 'load', tone: 'error' });
});

els.list.addEventListener('click', (ev) => {
  const target = /** @type {Element} */ (ev.target);
  const stop = target.closest('.row-cancel');
  const row = /** @type {HTMLElement|null} */ (target.closest('.session-row'));
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

const win = /** @type {Window & {gatewayApp?: object}} */ (window);
win.gatewayApp = { client, currentSession: () => current };

/** @type {(() => void)|null} ends init()'s wait before it retries loading the sessions */
let wakeInit = null;

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
      await new Promise((/** @type {(value?: unknown) => void} */ resolve) => {
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
