// The Durable Streams conformance suite (@durable-streams/server-conformance-tests, pinned in
// package.json) against a running gateway: DS_BASE_URL is its /ds endpoint. Started by
// tests/test_durable.py, which also starts Redis and the gateway.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DS_BASE_URL
if (!baseUrl) {
  throw new Error("DS_BASE_URL is not set (for example http://127.0.0.1:8000/ds)")
}

runConformanceTests({
  baseUrl,
  // The gateway's long-poll timeout (GATEWAY_DS_LONG_POLL_TIMEOUT), in milliseconds.
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_MS || 20000),
})
