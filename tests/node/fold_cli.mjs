// Folds event sequences with the browser fold, for tests/test_fold.py (one process for
// all of them). stdin: {"cases": [{"session_id", "initial"?: state, "events": [envelopes]}]}
// stdout: {"terminal_status", "event_types", "results": [{"state"} | {"error"}]}.
// Inputs and every intermediate state are deep-frozen, so a fold that mutates its input
// fails with an error instead of passing unnoticed.
import { readFileSync } from 'node:fs';

import { EVENT_TYPES, TERMINAL_STATUS, applyEvent, emptyState } from '../../frontend/gateway-fold.js';

function deepFreeze(value) {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

const input = JSON.parse(readFileSync(0, 'utf8') || '{}');
const results = (input.cases || []).map((c) => {
  try {
    let state = deepFreeze(c.initial ? c.initial : emptyState(c.session_id));
    for (const env of c.events) state = deepFreeze(applyEvent(state, deepFreeze(env)));
    return { state };
  } catch (err) {
    return { error: String(err && err.stack ? err.stack : err) };
  }
});
process.stdout.write(JSON.stringify({
  terminal_status: TERMINAL_STATUS, event_types: EVENT_TYPES, results,
}));
