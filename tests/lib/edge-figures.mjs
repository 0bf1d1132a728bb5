// Measurements for scripts/edge-figures (run that, not this). Prints a markdown report on stdout.
//
//   1. wasm size, raw and gzipped
//   2. GET /healthz in workerd (Miniflare on a port), the Rust worker beside a trivial JavaScript
//      worker, same run, same load: requests/s and latency percentiles
//   3. the latency the edge adds to an allocation: N sequential allocations straight to a real
//      `allot server` (signed here), N through the edge and N through a trivial JS proxy worker
//      (what any worker hop costs in Miniflare), interleaved, p50/p99 each way
//
// Env: FIGURES_ROUNDS (interleaved /healthz rounds, default 6), FIGURES_SECONDS (per worker and
//      round, default 2), FIGURES_CONNECTIONS (default 10),
//      FIGURES_ALLOCATIONS (each way, default 2000), ALLOT_FIGURES_BIN (origin binary; default
//      target/release/allot when present, else target/debug/allot).
import { existsSync, readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { EDGE_BUILD_DIR, REPO_ROOT, startEdge, DEFAULT_RATELIMITS } from "./edge.mjs";
import { startOrigin } from "./origin-process.mjs";
import { allocationBody, keyIdOf, randomHex, sign } from "./allot.mjs";

const SECONDS = Number(process.env.FIGURES_SECONDS ?? 2);
const ROUNDS = Number(process.env.FIGURES_ROUNDS ?? 6);
const CONNECTIONS = Number(process.env.FIGURES_CONNECTIONS ?? 10);
const ALLOCATIONS = Number(process.env.FIGURES_ALLOCATIONS ?? 2000);
const log = (...a) => console.error("edge-figures:", ...a);

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
const ms = (x) => x.toFixed(2);
const kb = (n) => `${(n / 1024).toFixed(0)} KiB`;

/** One HTTP request on a keep-alive agent; resolves with [status, latency ms]. */
function request(agent, url, { method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request(url, { method, agent, headers }, (res) => {
      res.on("data", () => {});
      res.on("end", () => resolve([res.statusCode, Number(process.hrtime.bigint() - t0) / 1e6]));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** `connections` closed loops for `seconds`; returns req/s and latency percentiles (ms). */
async function load(url, seconds, connections) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  // Warm up: JIT, connections, the isolate.
  const warmUntil = Date.now() + 1000;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (Date.now() < warmUntil) await request(agent, url);
    }),
  );
  const latencies = [];
  let errors = 0;
  const t0 = process.hrtime.bigint();
  const until = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (Date.now() < until) {
        const [status, lat] = await request(agent, url);
        if (status !== 200) errors++;
        latencies.push(lat);
      }
    }),
  );
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return {
    rps: latencies.length / elapsed,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    n: latencies.length,
    errors,
  };
}

const TRIVIAL_JS = `export default {
  async fetch(request) {
    return new Response('{"status":"pass"}', { headers: { "content-type": "application/health+json" } });
  },
};`;
const TRIVIAL_JS_LOGGING = `export default {
  async fetch(request) {
    console.log(JSON.stringify({ level: "info", msg: "request", route: "GET /healthz", status: 200 }));
    return new Response('{"status":"pass"}', { headers: { "content-type": "application/health+json" } });
  },
};`;

// The least a worker can do to forward: pass method, headers and body on, return the answer.
const PROXY_JS = `export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.ORIGIN + url.pathname + url.search, { method: request.method, headers: request.headers, body: request.body });
  },
};`;

async function startJsWorker(script, bindings = {}) {
  const { Miniflare } = await import("miniflare");
  const mf = new Miniflare({
    modules: true,
    script,
    bindings,
    compatibilityDate: "2026-04-20",
    host: "127.0.0.1",
    port: 0,
    cf: { colo: "FRA", country: "DE" },
    handleStructuredLogs: () => {},
  });
  const url = await mf.ready;
  return { url, dispose: () => mf.dispose() };
}

async function sizes() {
  const wasm = readFileSync(path.join(EDGE_BUILD_DIR, "index_bg.wasm"));
  const js = readFileSync(path.join(EDGE_BUILD_DIR, "index.js"));
  return {
    wasmRaw: wasm.length,
    wasmGz: gzipSync(wasm, { level: 9 }).length,
    jsRaw: js.length,
    jsGz: gzipSync(js, { level: 9 }).length,
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

async function healthz() {
  const rust = await startEdge({ logs: () => {} });
  const js = await startJsWorker(TRIVIAL_JS);
  const jsLog = await startJsWorker(TRIVIAL_JS_LOGGING);
  const workers = [
    ["rust", "Rust edge `/healthz` (as deployed: config, health JSON, one log line)", rust.url],
    ["js", "trivial JS worker (constant response)", js.url],
    ["jsLog", "trivial JS worker + one console.log line", jsLog.url],
  ];
  const runs = { rust: [], js: [], jsLog: [] };
  try {
    // Short interleaved rounds, rotating the order, so background load (2 shared cores) hits every
    // worker alike; each figure is the median over the rounds, the ratio the median of per-round ratios.
    for (let round = 0; round < ROUNDS; round++) {
      log(`/healthz round ${round + 1}/${ROUNDS}`);
      for (let k = 0; k < workers.length; k++) {
        const [key, , base] = workers[(round + k) % workers.length];
        runs[key].push(await load(new URL("/healthz", base), SECONDS, CONNECTIONS));
      }
    }
  } finally {
    await rust.dispose();
    await js.dispose();
    await jsLog.dispose();
  }
  const summary = (rs) => ({
    rps: median(rs.map((r) => r.rps)),
    p50: median(rs.map((r) => r.p50)),
    p99: median(rs.map((r) => r.p99)),
    n: rs.reduce((a, r) => a + r.n, 0),
    errors: rs.reduce((a, r) => a + r.errors, 0),
  });
  return {
    rows: workers.map(([key, name]) => [name, summary(runs[key])]),
    ratio: median(runs.rust.map((r, i) => r.rps / runs.js[i].rps)),
    ratios: runs.rust.map((r, i) => r.rps / runs.js[i].rps),
  };
}

async function addedLatency() {
  const bin =
    process.env.ALLOT_FIGURES_BIN ??
    (existsSync(path.join(REPO_ROOT, "target/release/allot"))
      ? path.join(REPO_ROOT, "target/release/allot")
      : undefined);
  // One denomination per path, each with enough cards for every allocation.
  const origin = await startOrigin({ cardsPerDenomination: ALLOCATIONS + 50, bin });
  const edge = await startEdge({
    logs: () => {},
    bindings: {
      ORIGINS: JSON.stringify({ eu: origin.url }),
      EDGE_SIGNING_SECRET: origin.secret,
      RL_KEY_LIMIT: "1000000",
    },
    ratelimits: { ...DEFAULT_RATELIMITS, RL_KEY_DEFAULT: { simple: { limit: 1_000_000, period: 60 } } },
  });
  const proxy = await startJsWorker(PROXY_JS, { ORIGIN: origin.url });
  const paths = {
    direct: { base: origin.url, denomination: "10.00", signHere: true, lat: [] },
    edge: { base: edge.url, denomination: "25.00", signHere: false, lat: [] },
    proxy: { base: proxy.url, denomination: "50.00", signHere: true, lat: [] },
  };
  for (const p of Object.values(paths)) p.agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const call = async (name) => {
      const p = paths[name];
      const body = allocationBody({ product_id: "gift-usd", denomination: p.denomination });
      const headers = {
        authorization: `Bearer ${origin.key}`,
        "idempotency-key": randomHex(),
        "content-type": "application/json",
      };
      if (p.signHere) {
        // What the edge does for the origin, done by the client: the signature.
        headers["allot-signature"] = sign(origin.secret, Math.floor(Date.now() / 1000), {
          method: "POST",
          pathAndQuery: "/v1/allocations",
          keyId: keyIdOf(headers.authorization),
          idempotencyKey: headers["idempotency-key"],
          body: Buffer.from(body),
        });
      }
      const [status, lat] = await request(p.agent, new URL("/v1/allocations", p.base), {
        method: "POST",
        headers,
        body,
      });
      if (status !== 201) throw new Error(`${name} allocation answered ${status}`);
      return lat;
    };
    const order = ["direct", "edge", "proxy"];
    log(`allocations: warm-up`);
    for (let i = 0; i < 25; i++) for (const name of order) await call(name);
    log(`allocations: ${ALLOCATIONS - 25} each way, interleaved`);
    for (let i = 0; i < ALLOCATIONS - 25; i++) {
      // Rotate which goes first so none always follows another.
      for (let j = 0; j < order.length; j++) {
        const name = order[(i + j) % order.length];
        paths[name].lat.push(await call(name));
      }
    }
  } finally {
    for (const p of Object.values(paths)) p.agent.destroy();
    await edge.dispose();
    await proxy.dispose();
    await origin.stop();
  }
  const stats = (xs) => {
    xs.sort((a, b) => a - b);
    return { p50: percentile(xs, 50), p99: percentile(xs, 99) };
  };
  return {
    bin: path.relative(REPO_ROOT, bin ?? path.join(REPO_ROOT, "target/debug/allot")),
    n: paths.direct.lat.length,
    direct: stats(paths.direct.lat),
    edge: stats(paths.edge.lat),
    proxy: stats(paths.proxy.lat),
  };
}

const LOAD_AT_START = os.loadavg()[0].toFixed(2);
const s = await sizes();
const h = await healthz();
const a = await addedLatency();

const out = [];
out.push(
  `## Edge figures (${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? "cpu"})`,
);
out.push("");
out.push("| figure | value | goal |");
out.push("|---|---|---|");
out.push(`| wasm (index_bg.wasm) raw | ${kb(s.wasmRaw)} | |`);
out.push(`| wasm gzipped (-9) | ${kb(s.wasmGz)} | ≤ 1 MiB |`);
out.push(`| JS glue (index.js) raw / gzipped | ${kb(s.jsRaw)} / ${kb(s.jsGz)} | |`);
out.push(
  `| \`/healthz\` Rust ÷ trivial JS throughput (median of ${ROUNDS} rounds) | ${h.ratio.toFixed(2)}× | ≥ 0.9× |`,
);
out.push(`| edge-added allocation latency p50 | ${ms(a.edge.p50 - a.direct.p50)} ms | ≤ 1 ms |`);
out.push(`| edge-added allocation latency p99 | ${ms(a.edge.p99 - a.direct.p99)} ms | |`);
out.push("");
out.push(
  `\`/healthz\` in workerd (Miniflare on 127.0.0.1), ${CONNECTIONS} keep-alive connections, ${ROUNDS} interleaved ` +
    `rounds × ${SECONDS} s each, medians; Node load generator on the same 2 cores; load average at start ` +
    `${LOAD_AT_START}; per-round Rust ÷ JS: ${h.ratios.map((r) => r.toFixed(2)).join(", ")}`,
);
out.push("");
out.push("| worker | req/s | p50 ms | p99 ms | requests | non-200 |");
out.push("|---|---|---|---|---|---|");
for (const [name, r] of h.rows)
  out.push(`| ${name} | ${r.rps.toFixed(0)} | ${ms(r.p50)} | ${ms(r.p99)} | ${r.n} | ${r.errors} |`);
out.push("");
out.push(
  `\`POST /v1/allocations\`, ${a.n} sequential each way (interleaved), one keep-alive connection, origin \`${a.bin}\` on the stack:`,
);
out.push("");
out.push("| path | p50 ms | p99 ms |");
out.push("|---|---|---|");
out.push(`| client → origin (signed by the client) | ${ms(a.direct.p50)} | ${ms(a.direct.p99)} |`);
out.push(`| client → edge (workerd) → origin | ${ms(a.edge.p50)} | ${ms(a.edge.p99)} |`);
out.push(`| client → trivial JS proxy worker (workerd) → origin | ${ms(a.proxy.p50)} | ${ms(a.proxy.p99)} |`);
out.push(`| added by the edge | ${ms(a.edge.p50 - a.direct.p50)} | ${ms(a.edge.p99 - a.direct.p99)} |`);
out.push(
  `| added by any worker hop here (trivial proxy) | ${ms(a.proxy.p50 - a.direct.p50)} | ${ms(a.proxy.p99 - a.direct.p99)} |`,
);
out.push(
  `| added by the edge's own work (edge − proxy) | ${ms(a.edge.p50 - a.proxy.p50)} | ${ms(a.edge.p99 - a.proxy.p99)} |`,
);
console.log(out.join("\n"));
