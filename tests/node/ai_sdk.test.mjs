// The Vercel AI SDK's own client (`ai`, pinned in package.json) against a real gateway and a
// real demo worker: DefaultChatTransport, readUIMessageStream and AbstractChat (what useChat
// runs) over POST /v1/chat, GET /v1/chat/{id}/stream, POST /v1/chat/{id}/stop and
// GET /v1/chat/{id}/messages. Run by tests/test_ai_sdk.py, which starts the processes and
// passes GATEWAY_URL and GATEWAY_TOKEN. No sleeps: every wait is on a condition (a number of
// chunks received, a callback called).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
} from 'ai';

const BASE = process.env.GATEWAY_URL;
const TOKEN = process.env.GATEWAY_TOKEN;
assert.ok(BASE, 'GATEWAY_URL is not set');
const api = `${BASE}/v1/chat`;
const headers = TOKEN ? { authorization: `Bearer ${TOKEN}` } : {};

const newChatId = () => `ai-${randomUUID().slice(0, 12)}`;
const userMessage = (text) => ({ id: `u-${randomUUID()}`, role: 'user', parts: [{ type: 'text', text }] });
// What a message is once sent or stored: fields the SDK leaves undefined are dropped.
const plain = (value) => JSON.parse(JSON.stringify(value));
const hasText = (message) => message.parts.some((p) => p.type === 'text' && p.text.length > 0);

function transport() {
  return new DefaultChatTransport({
    api,
    headers,
    // The gateway's resume URL is the SDK's default, {api}/{chatId}/stream; said explicitly here
    // as in the documented snippet (headers are the transport's: only the URL is set).
    prepareReconnectToStreamRequest: ({ id }) => ({ api: `${api}/${id}/stream` }),
  });
}

async function history(chatId) {
  const res = await fetch(`${api}/${chatId}/messages`, { headers });
  assert.equal(res.status, 200);
  return res.json();
}

// Records the type of every chunk that passes.
function recording(stream, types) {
  return stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        types.push(chunk.type);
        controller.enqueue(chunk);
      },
    }),
  );
}

async function lastOf(iterator, initial) {
  let last = initial;
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) return last;
    last = value;
  }
}

test('a second client resumes mid-run and ends with the same assistant message', async () => {
  const chatId = newChatId();
  const stream = await transport().sendMessages({
    chatId,
    messages: [userMessage('How do offsets and reconnect work across replicas?')],
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal: undefined,
  });
  const types = [];
  const live = readUIMessageStream({ stream: recording(stream, types), terminateOnError: true })[
    Symbol.asyncIterator
  ]();
  // Read until the answer has begun streaming: the run is then mid-way through its text.
  let continuous;
  do {
    const { value, done } = await live.next();
    assert.ok(!done, 'the stream ended before the answer began');
    continuous = value;
  } while (!hasText(continuous));

  const resumed = await transport().reconnectToStream({ chatId });
  assert.notEqual(resumed, null, 'the run was active: reconnectToStream must not be null');
  const resumedTypes = [];
  const replay = readUIMessageStream({ stream: recording(resumed, resumedTypes), terminateOnError: true });
  const [a, b] = await Promise.all([lastOf(live, continuous), lastOf(replay[Symbol.asyncIterator]())]);

  assert.deepEqual(plain(b), plain(a));
  assert.equal(a.id, b.id);
  assert.deepEqual(
    a.parts.map((p) => p.type),
    ['step-start', 'reasoning', 'tool-search_docs', 'text'],
  );
  assert.ok(a.parts.every((p) => p.state === 'done' || p.state === 'output-available' || !p.state));
  for (const seen of [types, resumedTypes]) {
    assert.equal(seen[0], 'start');
    assert.equal(seen.at(-1), 'finish');
    assert.equal(seen.filter((t) => t === 'start').length, 1);
  }
  // The replay is a full one: the same chunk sequence as the continuous stream.
  assert.deepEqual(resumedTypes, types);
  // The history (to seed useChat({messages})) holds the same message, once.
  const messages = await history(chatId);
  assert.equal(messages.length, 2);
  assert.equal(messages[0].role, 'user');
  assert.deepEqual(messages[1], plain(a));
  // The run is over: nothing to resume.
  assert.equal(await transport().reconnectToStream({ chatId }), null);
});

test('an idle chat: reconnectToStream returns null (204)', async () => {
  assert.equal(await transport().reconnectToStream({ chatId: newChatId() }), null);
});

test('stop cancels the run: the stream ends with abort, a new message can follow', async () => {
  const chatId = newChatId();
  const stream = await transport().sendMessages({
    chatId,
    messages: [userMessage('Explain the snapshot format in detail')],
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal: undefined,
  });
  const types = [];
  const live = readUIMessageStream({ stream: recording(stream, types), terminateOnError: true })[
    Symbol.asyncIterator
  ]();
  const first = await live.next(); // the run is streaming
  assert.ok(!first.done);
  // As the documented stop button does: this message's run only (its id is the run id).
  const stop = await fetch(`${api}/${chatId}/stop?run_id=${first.value.id}`, { method: 'POST', headers });
  assert.equal(stop.status, 202);
  const { run_id } = await stop.json();
  const last = await lastOf(live, first.value);
  assert.equal(last.id, run_id);
  assert.equal(types.at(-1), 'abort');
  assert.ok(!types.includes('finish'));
  // Open parts were closed before the end: nothing is left streaming.
  assert.ok(last.parts.every((p) => p.state !== 'streaming'));
  const snap = await (await fetch(`${BASE}/v1/sessions/${chatId}/snapshot`, { headers })).json();
  assert.equal(snap.state.runs.at(-1).status, 'cancelled');
  assert.equal((await fetch(`${api}/${chatId}/stop`, { method: 'POST', headers })).status, 204);
  assert.equal(await transport().reconnectToStream({ chatId }), null);
});

class State {
  constructor(messages = []) {
    this.status = 'ready';
    this.error = undefined;
    this.messages = messages;
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(value) {
    return structuredClone(value);
  }
}

// AbstractChat with a plain state, as useChat builds it; `finished()` is the next onFinish.
class TestChat extends AbstractChat {
  constructor({ messages, ...init }) {
    const waiting = [];
    super({
      ...init,
      state: new State(messages),
      onFinish: (event) => waiting.shift()?.(event),
      onError: (error) => waiting.shift()?.({ error }),
    });
    this.finished = () => new Promise((resolve) => waiting.push(resolve));
  }
}

const approvalPart = (message) => message.parts.find((p) => p.type === 'tool-approval');

test('approval: useChat logic answers it, a reloaded chat shows it once, the run continues', async () => {
  const chatId = newChatId();
  const chat = new TestChat({
    id: chatId,
    transport: transport(),
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses,
  });
  await chat.sendMessage({ text: 'What does the gateway store in Redis? Ask my approval first.' });
  assert.equal(chat.status, 'ready');
  assert.equal(chat.messages.length, 2);
  const asked = approvalPart(chat.messages[1]);
  assert.equal(asked.state, 'approval-requested');

  // A reload: a new client seeded from the history resumes the active (waiting) run.
  const reloaded = new TestChat({ id: chatId, transport: transport(), messages: await history(chatId) });
  await reloaded.resumeStream();
  assert.equal(reloaded.status, 'ready');
  assert.equal(reloaded.messages.length, 2, 'one copy of the assistant message');
  assert.deepEqual(plain(reloaded.messages[1]), plain(chat.messages[1]));

  // The answer goes back as the next POST /v1/chat (sendAutomaticallyWhen) and continues the run.
  const done = chat.finished();
  await chat.addToolApprovalResponse({ id: asked.approval.id, approved: true });
  const finish = await done;
  assert.equal(finish.finishReason, 'stop', JSON.stringify(finish.error?.message));
  assert.equal(chat.messages.length, 2);
  const final = chat.messages[1];
  const answered = approvalPart(final);
  assert.equal(answered.state, 'output-available');
  assert.equal(answered.approval.approved, true);
  assert.ok(hasText(final));
  assert.deepEqual(
    final.parts.map((p) => p.type),
    ['step-start', 'reasoning', 'tool-search_docs', 'tool-approval', 'step-start', 'text'],
  );
  // The stored history holds the same message, and the reloaded chat reaches it too.
  const messages = await history(chatId);
  assert.deepEqual(messages[1], plain(final));
  const again = new TestChat({ id: chatId, transport: transport(), messages });
  await again.resumeStream(); // the run is over: 204, nothing changes
  assert.deepEqual(plain(again.messages[1]), plain(final));
});
