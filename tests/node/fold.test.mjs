// The shared fold fixtures (tests/fixtures/fold/*.json) against the browser fold.
// Run from the repository root: node --test tests/node/fold.test.mjs (no npm packages).
// tests/test_fold.py runs this file too and expects one test per fixture plus the
// EXTRA_TESTS below; keep that number in step when adding tests here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';

import {
  EVENT_TYPES, TERMINAL_STATUS, applyEvent, emptyState, normalizeState,
} from '../../frontend/gateway-fold.js';

const DIR = new URL('../fixtures/fold/', import.meta.url);
const files = readdirSync(DIR).filter((f) => f.endsWith('.json')).sort();

/** Freeze a JSON value and everything in it: a fold that mutates its input throws. */
function deepFreeze(value) {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** Fold a fixture's events from its initial state (or the empty one), checking purity. */
export function foldFixture(fx) {
  let state = deepFreeze(fx.initial ? structuredClone(fx.initial) : emptyState(fx.session_id));
  for (const env of fx.events) {
    state = deepFreeze(applyEvent(state, deepFreeze(structuredClone(env))));
  }
  return state;
}

for (const file of files) {
  const fx = JSON.parse(readFileSync(new URL(file, DIR), 'utf8'));
  test(`fixture ${file}`, () => {
    assert.ok(typeof fx.description === 'string' && fx.description, 'a description');
    assert.deepEqual(foldFixture(fx), fx.expected, fx.description);
  });
}

export const EXTRA_TESTS = 3;

test('terminal types are event types', () => {
  for (const type of Object.keys(TERMINAL_STATUS)) assert.ok(EVENT_TYPES.includes(type), type);
  assert.ok(Object.isFrozen(TERMINAL_STATUS) && Object.isFrozen(EVENT_TYPES));
});

test('an event that changes nothing returns the same state object', () => {
  const s0 = emptyState('s');
  const s1 = applyEvent(s0, { type: 'run.started', run_id: 'r1', data: { input: 'q' } });
  const s2 = applyEvent(s1, { type: 'run.completed', run_id: 'r1', data: {} });
  for (const env of [
    { type: 'vendor.x', run_id: 'r9', data: {} },
    { type: 'message.delta', run_id: null, data: { text: 'x' } },
    { type: 'message.delta', run_id: 'r1', data: { text: 'late' } },
    { type: 'run.failed', run_id: 'r1', data: { error: 'late' } },
    { type: 'tool.started', run_id: 'r1', data: { name: 'no id' } },
    { type: 'session.title', run_id: null, data: { title: 7 } },
  ]) assert.equal(applyEvent(s2, env), s2, JSON.stringify(env));
  assert.equal(applyEvent(s1, { type: 'message.delta', run_id: 'r1', data: { text: '' } }), s1);
  assert.equal(applyEvent(s1, { type: 'run.started', run_id: 'r1', data: { input: 'q' } }), s1);
  assert.equal(applyEvent(s0, null), s0);
});

test('untouched runs, tools and lists are shared with the previous state', () => {
  let s = normalizeState('s', null);
  s = applyEvent(s, { type: 'run.started', run_id: 'r1', data: { input: 'a' } });
  s = applyEvent(s, { type: 'tool.started', run_id: 'r1', data: { tool_call_id: 'c', name: 'n', args: {} } });
  s = applyEvent(s, { type: 'run.completed', run_id: 'r1', data: {} });
  s = applyEvent(s, { type: 'run.started', run_id: 'r2', data: { input: 'b' } });
  const before = s;
  s = applyEvent(s, { type: 'message.delta', run_id: 'r2', data: { text: 'x' } });
  assert.notEqual(s, before);
  assert.equal(s.runs[0], before.runs[0]);
  assert.notEqual(s.runs[1], before.runs[1]);
  assert.equal(s.runs[1].tools, before.runs[1].tools);
  assert.equal(s.pending_approvals, before.pending_approvals);
});
