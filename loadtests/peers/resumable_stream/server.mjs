// Vercel's `resumable-stream` behind a small Node HTTP server, as an AI SDK app uses it: the
// request that runs the model creates the stream (`resumableStream`), a reconnecting client
// resumes it (`resumeExistingStream`), both on the benchmark's redis-server (REDIS_URL).
//
//   node server.mjs PORT            (REDIS_URL in the environment)
//
// Routes (driven by loadtests/bench_peers.py):
//   POST /start/ID?backlog=N     a producing stream with N events already produced, kept
//                                running (the model still "thinking"); the original request's
//                                reader is drained in this process. Answers once N are out.
//   POST /end/ID                 the stream ends (the model finished); answers once the
//                                library has marked it DONE in Redis.
//   GET  /streams/ID             the reattach: `resumeExistingStream(ID)`; 200 and the stream
//                                as SSE, or the AI SDK's documented answers when there is none:
//                                204 (stream done) / 404 (no such stream).
//   POST /publish?streams=S&events=N&listeners=L
//                                publish rate: S streams at once, N events in all, produced as
//                                fast as the stream pulls them, each with L resumed listeners
//                                attached in this process; answers {events, seconds, rate}.
// Every event is one SSE frame `data: {"text":"token ","t_ns":…,"i":…}\n\n`, the frame the
// Python viewers parse (publish time and per-stream index).

import http from "node:http";
import { createResumableStreamContext } from "resumable-stream";

const ctx = createResumableStreamContext({ waitUntil: null });
const running = new Map(); // id -> { close() }

const clockBase = BigInt(Date.now()) * 1000000n - process.hrtime.bigint(); // wall clock, ns

function frame(i) {
  const tNs = clockBase + process.hrtime.bigint();
  return `data: {"text":"token ","t_ns":${tNs},"i":${i}}\n\n`;
}

async function drain(stream, onChunk) {
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    if (onChunk) onChunk(value);
  }
}

async function start(id, backlog) {
  let controller;
  let produced;
  const ready = new Promise((resolve) => (produced = resolve));
  const make = () =>
    new ReadableStream({
      start(c) {
        controller = c;
        for (let i = 1; i <= backlog; i++) c.enqueue(frame(i));
        produced();
      },
    });
  const stream = await ctx.resumableStream(id, make);
  if (stream === null) throw new Error(`stream ${id} is already done`);
  const drained = drain(stream);
  await ready;
  running.set(id, {
    async close() {
      controller.close();
      await drained;
    },
  });
}

async function end(id) {
  const s = running.get(id);
  if (!s) return false;
  running.delete(id);
  await s.close();
  // The library sets the DONE sentinel right after the producer's reader sees the end.
  for (let k = 0; k < 200; k++) {
    if ((await ctx.hasExistingStream(id)) === "DONE") return true;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`stream ${id} not marked DONE`);
}

async function publish(streams, events, listeners, prefix) {
  const per = Math.floor(events / streams);
  const t0 = performance.now();
  let received = 0;
  await Promise.all(
    Array.from({ length: streams }, async (_, s) => {
      const id = `${prefix}-${s}`;
      let open;
      const gate = new Promise((r) => (open = r));
      let i = 0;
      const make = () =>
        new ReadableStream({
          async pull(c) {
            if (i === 0) await gate; // wait for the listeners to attach
            i += 1;
            if (i > per) c.close();
            else c.enqueue(frame(i));
          },
        });
      const stream = await ctx.resumableStream(id, make);
      const jobs = [drain(stream)];
      for (let l = 0; l < listeners; l++) {
        const resumed = await ctx.resumeExistingStream(id);
        jobs.push(drain(resumed, (chunk) => (received += chunk.split("\n\n").length - 1)));
      }
      open();
      await Promise.all(jobs);
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return { events: per * streams, seconds, rate: (per * streams) / seconds, received };
}

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  const parts = url.pathname.split("/").filter(Boolean);
  try {
    if (req.method === "POST" && parts[0] === "start") {
      await start(parts[1], Number(url.searchParams.get("backlog") || 0));
      return json(res, 200, { ok: true });
    }
    if (req.method === "POST" && parts[0] === "end") {
      return json(res, 200, { ended: await end(parts[1]) });
    }
    if (req.method === "POST" && parts[0] === "publish") {
      const q = url.searchParams;
      const out = await publish(
        Number(q.get("streams") || 1),
        Number(q.get("events") || 1000),
        Number(q.get("listeners") || 0),
        q.get("prefix") || "pub",
      );
      return json(res, 200, out);
    }
    if (req.method === "GET" && parts[0] === "streams") {
      const stream = await ctx.resumeExistingStream(parts[1]);
      if (stream === null) {
        res.writeHead(204); // AI SDK docs: the stream is done, load the saved messages instead
        return res.end();
      }
      if (stream === undefined) {
        res.writeHead(404);
        return res.end();
      }
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      req.on("close", () => stream.cancel().catch(() => {}));
      const reader = stream.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        res.write(value);
      }
      return res.end();
    }
    json(res, 404, { error: "no route" });
  } catch (err) {
    if (!res.headersSent) json(res, 500, { error: String(err) });
    else res.end();
  }
});

server.listen(Number(process.argv[2]), "127.0.0.1");
