// @ag-ui/client (pinned in package.json) against a real gateway and the demo worker.
// Run by tests/test_agui.py (GATEWAY_URL set): node --test tests/node/agui.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { HttpAgent } from '@ag-ui/client';
import { GatewayAgent } from './gateway-agent.mjs';

const BASE = process.env.GATEWAY_URL;
assert.ok(BASE, 'GATEWAY_URL must name a running gateway');

function session() {
  const sid = `n-${randomUUID().slice(0, 12)}`;
  return { sid, url: `${BASE}/v1/sessions/${sid}/agui` };
}

function ask(agent, content) {
  agent.addMessage({ id: `u-${randomUUID()}`, role: 'user', content });
}

/** Resolves on the agent's n-th TEXT_MESSAGE_CONTENT (the run is then mid-answer). */
function nthContent(agent, n) {
  let seen = 0;
  return new Promise((resolve) => {
    agent.subscribe({ onTextMessageContentEvent: () => { if (++seen === n) resolve(); } });
  });
}

/** The message list shape a demo turn must produce. */
function checkTurn(messages) {
  const roles = messages.map((m) => m.role);
  assert.deepEqual(roles, ['user', 'reasoning', 'assistant', 'tool', 'assistant'], roles.join());
  assert.equal(messages[2].toolCalls[0].function.name, 'search_docs');
  assert.ok(JSON.parse(messages[2].toolCalls[0].function.arguments).query);
  assert.equal(messages[3].toolCallId, messages[2].toolCalls[0].id);
  assert.ok(messages[4].content.length > 40, messages[4].content);
}

test('an unmodified HttpAgent runs a turn; a second instance attaches mid-run', async () => {
  const { sid, url } = session();
  const a = new HttpAgent({ url, threadId: sid });
  ask(a, 'How does reconnect resume from the stored offset?');
  const midRun = nthContent(a, 3);
  const running = a.runAgent();
  await midRun;
  // A second tab: a fresh instance, no state; connect() replays the run in progress, then
  // follows it live until it ends.
  const b = new GatewayAgent({ url, threadId: sid });
  await Promise.all([running, b.connectAgent()]);
  checkTurn(a.messages);
  assert.deepEqual(b.messages, a.messages);
  assert.equal(a.pendingInterrupts.length, 0);
});

test('a second instance resumes from the saved offset mid-message; same messages', async () => {
  const { sid, url } = session();
  const c = new GatewayAgent({ url, threadId: sid });
  ask(c, 'What does the stored offset of a connection mean?');
  // What a page persists as it goes (e.g. to localStorage): the messages with the offset.
  let saved;
  c.subscribe({
    onMessagesChanged: ({ messages }) => {
      saved = { messages: structuredClone(messages), lastEventId: c.lastEventId };
    },
  });
  const midRun = nthContent(c, 3);
  const running = c.runAgent();
  await midRun;
  c.abortRun(); // the tab is closed in the middle of the answer
  await running;
  const partial = saved.messages.at(-1);
  assert.equal(partial.role, 'assistant');
  assert.ok(partial.content.length > 0, 'saved in the middle of the answer');

  const d = new GatewayAgent({
    url, threadId: sid, initialMessages: saved.messages, lastEventId: saved.lastEventId,
  });
  const seen = [];
  d.subscribe({ onEvent: ({ event }) => { seen.push(event.type); } });
  await d.connectAgent();
  assert.equal(seen[0], 'RUN_STARTED');
  assert.ok(seen.includes('TEXT_MESSAGE_CONTENT'));
  assert.equal(seen.at(-1), 'RUN_FINISHED');

  // The reference: a fresh instance replaying the whole run.
  const whole = new GatewayAgent({ url, threadId: sid });
  await whole.connectAgent();
  checkTurn(whole.messages);
  assert.deepEqual(d.messages, whole.messages);
  assert.ok(d.messages.at(-1).content.startsWith(partial.content));
});

test('an approval is an interrupt, answered with runAgent({resume})', async () => {
  const { sid, url } = session();
  const a = new HttpAgent({ url, threadId: sid });
  ask(a, 'Search the docs, with approval, for the stored offset');
  await a.runAgent();
  assert.equal(a.pendingInterrupts.length, 1);
  const [interrupt] = a.pendingInterrupts;
  assert.equal(interrupt.reason, 'approval');
  assert.ok(interrupt.message);
  // The client refuses a new run that leaves the interrupt unanswered.
  await assert.rejects(a.runAgent(), /pending interrupt/);
  await a.runAgent({
    resume: [{ interruptId: interrupt.id, status: 'resolved', payload: { approved: true } }],
  });
  assert.equal(a.pendingInterrupts.length, 0);
  checkTurn(a.messages);
  assert.match(a.messages.at(-1).content, /documentation/);

  const replay = new GatewayAgent({ url, threadId: sid });
  await replay.connectAgent(); // from=run ends at the interrupt: the run's first AG-UI run
  assert.equal(replay.pendingInterrupts.length, 1);
});
