// @ts-check
// Requests to the gateway, shared by the tab client (gateway-client.js) and the hub
// (gateway-hub-transport.js): fetch() options with the access token, reading answers and
// their `{"code", "message"}` errors (docs/api.md), tokens in URLs (EventSource, beacons),
// a JWT's unverified claims, and the JSON of an SSE frame. Pure functions: no DOM, no state.

/**
 * A gateway answer, read: `{ok, status, data, code, message}`.
 * @typedef {{ok: boolean, status: number, data: any, code: string|null, message: string}} GatewayResponse
 */

/**
 * fetch() options for a JSON request to the gateway (`body` undefined: no body).
 * @param {string} method
 * @param {unknown} [body]
 * @param {string|null} [token] access token, sent as `Authorization: Bearer`
 * @returns {RequestInit & {headers: Record<string, string>}}
 */
export function requestInit(method, body, token) {
  /** @type {RequestInit & {headers: Record<string, string>}} */
  const init = { method, headers: { Accept: 'application/json' } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return init;
}

/**
 * Read a gateway response: `{ok, status, data, code, message}`. Error bodies are
 * `{"code", "message"}` (docs/api.md); a non-JSON body leaves `data` null.
 * @param {Response} res
 * @returns {Promise<GatewayResponse>}
 */
export async function readResponse(res) {
  let data = null;
  const text = res.status === 204 ? '' : await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  return {
    ok: res.ok,
    status: res.status,
    data,
    code: res.ok ? null : (data && data.code) || `http_${res.status}`,
    message: (data && data.message) || '',
  };
}

/**
 * `path` with `?access_token=` (or `&…`) appended when there is a token: for the
 * EventSource and sendBeacon, which cannot set headers.
 * @param {string} url
 * @param {string|null} [token]
 * @returns {string}
 */
export function withToken(url, token) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(token)}`;
}

/**
 * The unverified claims of a JWT (`sub`, `exp`, …), or null. Only to plan refreshes and
 * notice a change of user: the gateway verifies tokens, the browser cannot.
 * @param {string|null} token
 * @returns {{sub?: string, exp?: number, [claim: string]: unknown}|null}
 */
export function tokenClaims(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const claims = JSON.parse(atob(b64));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** A refused request, for the retry loops: `.status` and `.code` of the gateway's answer. */
export class HttpError extends Error {
  /** @param {{status: number, code: string|null, message?: string}} r */
  constructor(r) {
    super(r.message || `${r.code} (HTTP ${r.status})`);
    this.status = r.status;
    this.code = r.code;
  }
}

/**
 * Parse a frame's JSON data; null when it is not JSON.
 * @param {MessageEvent} ev
 * @returns {any}
 */
export function parseFrame(ev) {
  try { return JSON.parse(ev.data); } catch { return null; }
}
