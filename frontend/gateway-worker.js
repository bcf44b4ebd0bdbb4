// @ts-check
// SharedWorker entry: one per browser profile and gateway base URL (the worker's name),
// shared by every tab of the origin. It runs the hub (gateway-hub.js), which owns the
// browser's single EventSource. Tabs connect with gateway-client.js.

import { GatewayHub } from './gateway-hub.js';

/**
 * The parts of SharedWorkerGlobalScope used here, typed so that this file checks both
 * with the DOM lib and with the webworker lib (tests/node).
 * @typedef {{addEventListener(type: 'connect', listener: (ev: MessageEvent) => void): void,
 *   gatewayHub?: GatewayHub}} WorkerScope
 */
const scope = /** @type {WorkerScope} */ (/** @type {unknown} */ (self));

/** @type {Map<string, MessagePort>} tab id -> its port */
const ports = new Map();
/** @type {GatewayHub|null} */
let hub = null;

/** @type {import('./gateway-hub.js').HubSend} */
function send(tabs, msg) {
  if (tabs === '*') {
    for (const port of new Set(ports.values())) port.postMessage(msg);
    return;
  }
  for (const tab of tabs) ports.get(tab)?.postMessage(msg);
}

scope.addEventListener('connect', (ev) => {
  const port = ev.ports[0];
  port.addEventListener('message', (e) => {
    const msg = e.data;
    if (!msg || typeof msg !== 'object') return;
    if (msg.t === 'hello' && typeof msg.tab === 'string') {
      if (!hub) {
        const o = msg.hubOptions && typeof msg.hubOptions === 'object' ? msg.hubOptions : {};
        /** @param {unknown} v */
        const num = (v) => (typeof v === 'number' && v >= 0 ? v : undefined);
        hub = new GatewayHub({
          transport: 'shared-worker',
          baseUrl: typeof msg.baseUrl === 'string' ? msg.baseUrl : '',
          ackIntervalMs: num(o.ackIntervalMs),
          maxBackoffMs: num(o.maxBackoffMs),
          unsubscribeGraceMs: num(o.unsubscribeGraceMs),
          send,
          onTabGone: (tab) => { ports.delete(tab); },
        });
        scope.gatewayHub = hub; // for chrome://inspect
      }
      ports.set(msg.tab, port);
    }
    if (hub) hub.handle(msg);
    if (msg.t === 'bye') ports.delete(msg.tab);
  });
  port.start();
});
