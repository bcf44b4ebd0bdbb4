// Load generator for loadtests/ds_bench.py: the same workload against any Durable Streams
// server. Usage: node bench.mjs <base URL> append|sse '<options JSON>'; prints a JSON result.
//
// append: `writers` concurrent writers spread over `streams` JSON streams POST ~`size`-byte
//         messages for `seconds`: completed appends per second and per-request latency.
// sse:    `readers` SSE readers (offset=now) on one JSON stream; one writer appends `events`
//         messages at `rate` per second, each stamped with performance.now(); every reader
//         records arrival minus stamp (same process, same clock) and checks the sequence.
import http from "node:http"
import { performance } from "node:perf_hooks"

const [, , baseUrl, phase, optionsJson] = process.argv
const options = JSON.parse(optionsJson || "{}")
const runId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
const JSON_TYPE = { "content-type": "application/json" }

// node:http with keep-alive: far less client CPU per request than fetch (undici), which
// matters on a small machine shared by the servers under test and the generator.
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 })

function request(url, method, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers }, (res) => {
      res.resume()
      res.on("end", () => resolve(res.statusCode))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(body)
  })
}

function quantile(values, q) {
  if (values.length === 0) return null
  const sorted = Float64Array.from(values).sort()
  return sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))]
}

async function create(url) {
  const status = await request(url, "PUT", undefined, JSON_TYPE)
  if (status !== 201) throw new Error(`PUT ${url}: ${status}`)
}

async function append({ streams = 8, writers = 32, seconds = 10, size = 100 }) {
  const urls = Array.from({ length: streams }, (_, i) => `${baseUrl}/v1/stream/bench-append-${runId}-${i}`)
  for (const url of urls) await create(url)
  const body = JSON.stringify({ role: "assistant", text: "x".repeat(Math.max(0, size - 32)) })
  const latencies = []
  let errors = 0
  const deadline = performance.now() + seconds * 1000
  async function writer(url) {
    while (performance.now() < deadline) {
      const t0 = performance.now()
      const status = await request(url, "POST", body, JSON_TYPE)
      if (status === 204 || status === 200) latencies.push(performance.now() - t0)
      else errors++
    }
  }
  const t0 = performance.now()
  await Promise.all(Array.from({ length: writers }, (_, i) => writer(urls[i % streams])))
  const elapsed = (performance.now() - t0) / 1000
  return {
    appends: latencies.length,
    errors,
    seconds: elapsed,
    appends_per_s: latencies.length / elapsed,
    request_p50_ms: quantile(latencies, 0.5),
    request_p99_ms: quantile(latencies, 0.99),
    body_bytes: body.length,
  }
}

async function sse({ readers = 100, events = 1000, rate = 100 }) {
  const url = `${baseUrl}/v1/stream/bench-sse-${runId}`
  await create(url)
  const latencies = []
  let connected = 0
  let problems = 0
  let delivered = 0
  const aborts = []

  async function reader() {
    const abort = new AbortController()
    aborts.push(abort)
    const res = await fetch(`${url}?offset=now&live=sse`, { signal: abort.signal })
    const stream = res.body.getReader()
    const decoder = new TextDecoder()
    let buffer = ""
    let ready = false
    let expect = 0
    try {
      while (expect < events) {
        const { done, value } = await stream.read()
        if (done) break
        buffer += decoder.decode(value, { stream: true })
        let end
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (block.startsWith("event: control")) {
            if (!ready) {
              ready = true
              connected++
            }
          } else if (block.startsWith("event: data")) {
            const now = performance.now()
            const text = block
              .split("\n")
              .filter((line) => line.startsWith("data:"))
              .map((line) => line.slice(5))
              .join("\n")
            for (const item of JSON.parse(text)) {
              latencies.push(now - item.t)
              if (item.i !== expect) problems++
              expect = item.i + 1
              delivered++
            }
          }
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") throw err
    }
  }

  const tasks = Array.from({ length: readers }, () => reader())
  const waitStart = performance.now()
  while (connected < readers) {
    if (performance.now() - waitStart > 30_000) throw new Error(`only ${connected} readers connected`)
    await new Promise((r) => setTimeout(r, 20))
  }
  await new Promise((r) => setTimeout(r, 200))
  const start = performance.now()
  let appendErrors = 0
  for (let i = 0; i < events; i++) {
    const delay = start + (i * 1000) / rate - performance.now()
    if (delay > 0) await new Promise((r) => setTimeout(r, delay))
    const body = JSON.stringify({ i, t: performance.now(), text: "token " + i })
    if ((await request(url, "POST", body, JSON_TYPE)) !== 204) appendErrors++
  }
  const sent = (performance.now() - start) / 1000
  const settle = setTimeout(() => aborts.forEach((a) => a.abort()), 15_000)
  await Promise.all(tasks)
  clearTimeout(settle)
  return {
    readers,
    events,
    rate_per_s: events / sent,
    deliveries: delivered,
    expected_deliveries: readers * events,
    gaps_or_duplicates: problems,
    append_errors: appendErrors,
    p50_ms: quantile(latencies, 0.5),
    p99_ms: quantile(latencies, 0.99),
    max_ms: latencies.length ? Math.max(...latencies) : null,
  }
}

const result = phase === "append" ? await append(options) : await sse(options)
console.log(JSON.stringify(result))
process.exit(0)
