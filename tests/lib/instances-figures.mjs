// Figures for scripts/instances-figures (run that, not this): the hot allocation path through the
// edge (workerd) with ORIGINS.eu naming ONE `allot run-all` instance, and with it naming TWO
// instances on the same database and cache, measured in the same run, interleaved, with wrk and the
// benchmark's own script (scripts/bench.d/alloc.lua). Prints a markdown report on stdout.
//
// Env: FIGURES_SECONDS (per measurement, default 10), FIGURES_ROUNDS (default 3),
//      FIGURES_CONNECTIONS (default 32), FIGURES_CARDS (stock of the hot bucket, default: enough
//      for every run at 2,500 allocations/s),
//      ALLOT_BIN (the origin binary; scripts/instances-figures passes the release build).
import { spawn } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { REPO_ROOT, startEdge, DEFAULT_RATELIMITS } from "./edge.mjs";
import { startOrigin } from "./origin-process.mjs";
import { randomHex } from "./allot.mjs";

const SECONDS = Number(process.env.FIGURES_SECONDS ?? 10);
const ROUNDS = Number(process.env.FIGURES_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.FIGURES_CONNECTIONS ?? 32);
const WARMUP_SECONDS = 2;
/** Enough for every run at 2,500 allocations/s (well above what this path does on 2 cores). */
const CARDS = Number(process.env.FIGURES_CARDS ?? ROUNDS * 2 * (SECONDS + WARMUP_SECONDS) * 2500);
const HOT = { product: "gift-usd", denomination: "10.00", minor: 1000 };
const LUA = path.join(REPO_ROOT, "scripts", "bench.d", "alloc.lua");
const log = (...a) => console.error("instances-figures:", ...a);

/**
 * One wrk run against `url`; resolves with the fields of alloc.lua's RESULT line. Asynchronous on
 * purpose: workerd's log lines reach Miniflare through this process, and a blocked event loop
 * would fill that pipe and stall the worker.
 */
async function wrk(url, key, name, seconds) {
  const env = {
    ...process.env,
    BENCH_KEY: key,
    BENCH_BUCKETS: `${HOT.product}:${HOT.denomination}`,
    BENCH_TAG: `${name}-${randomHex(4)}`,
    BENCH_NAME: name,
    BENCH_SIZE: "fresh",
    BENCH_THREADS: "2",
  };
  const child = spawn(
    "wrk",
    ["-t2", `-c${CONNECTIONS}`, `-d${seconds}s`, "--timeout", "10s", "--latency", "-s", LUA, url],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
  const status = await new Promise((resolve) => child.once("close", resolve));
  const line = stdout.split("\n").find((l) => l.startsWith("RESULT "));
  if (status !== 0 || !line) throw new Error(`wrk failed (${status}): ${stderr}\n${stdout}`);
  return Object.fromEntries(
    line
      .slice("RESULT ".length)
      .split(" ")
      .map((kv) => kv.split("="))
      .map(([k, v]) => [k, Number.isNaN(Number(v)) ? v : Number(v)]),
  );
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** POST /v1/allocations answers in an origin's access log (JSON lines). */
function allocationsServed(origin) {
  let n = 0;
  for (const raw of origin.logs) {
    if (!raw.includes('"message":"request"') || !raw.includes('"/v1/allocations"')) continue;
    try {
      const l = JSON.parse(raw);
      if (l.span?.["http.request.method"] === "POST") n++;
    } catch {
      // not JSON
    }
  }
  return n;
}

async function main() {
  let a, b, one, two;
  try {
    log(`starting instance 1 (${process.env.ALLOT_BIN ?? "target/debug/allot"})`);
    a = await startOrigin({ command: "run-all", cardsPerDenomination: 200 });
    log(`multiplying the hot bucket's cards to ${CARDS} (copies of real sealed cards, fresh digests)`);
    a.sql(
      `INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest)
       SELECT c.product_id, c.denomination_minor, c.code_ciphertext, c.code_nonce, c.code_key_id,
              sha256(convert_to('figures-' || g || '-' || c.id, 'UTF8'))
         FROM (SELECT * FROM inventories
                WHERE product_id = '${HOT.product}' AND denomination_minor = ${HOT.minor} AND status = 'active') c
        CROSS JOIN generate_series(1, ${Math.ceil(CARDS / 200)}) g`,
    );
    a.cli(["inventory", "rebuild-cache"]);
    log("starting instance 2 on the same database and cache");
    b = await startOrigin({ command: "run-all", join: a });
    const bindings = (origins) => ({
      ORIGINS: JSON.stringify({ eu: origins.map((o) => o.url) }),
      EDGE_SIGNING_SECRET: a.secret,
      RL_KEY_LIMIT: "1000000",
    });
    const ratelimits = { ...DEFAULT_RATELIMITS, RL_KEY_DEFAULT: { simple: { limit: 1_000_000, period: 60 } } };
    one = await startEdge({ bindings: bindings([a]), ratelimits, logs: () => {} });
    two = await startEdge({ bindings: bindings([a, b]), ratelimits, logs: () => {} });

    const results = { one: [], two: [] };
    const share = { a: 0, b: 0 };
    for (let round = 1; round <= ROUNDS; round++) {
      // Alternate which goes first, so drift (autovacuum, the cache warming) favours neither.
      const order = round % 2 ? ["one", "two"] : ["two", "one"];
      for (const which of order) {
        const edge = which === "one" ? one : two;
        const url = edge.url.toString().replace(/\/$/, "");
        await wrk(url, a.key, `${which}-warmup`, WARMUP_SECONDS);
        const before = { a: allocationsServed(a), b: allocationsServed(b) };
        const r = await wrk(url, a.key, which, SECONDS);
        if (which === "two") {
          share.a += allocationsServed(a) - before.a;
          share.b += allocationsServed(b) - before.b;
        }
        log(
          `round ${round} ${which}: ${r.allocs_per_s.toFixed(0)} allocations/s, p50 ${r.p50_ms} ms, ` +
            `p99 ${r.p99_ms} ms, statuses ${r.statuses}, transport errors ${r.transport_errors}`,
        );
        if (r.s5xx || r.s4xx || r.s409 || r.transport_errors) {
          const hint = r.oos409 ? "; the bucket ran out of cards: raise FIGURES_CARDS" : "";
          throw new Error(
            `${which}: answers other than 201 (${r.statuses}; transport errors ${r.transport_errors})${hint}`,
          );
        }
        results[which].push(r);
      }
    }
    const left = a.sql(
      `SELECT count(*) FROM inventories WHERE product_id = '${HOT.product}' AND denomination_minor = ${HOT.minor} AND status = 'active'`,
    );
    const row = (label, rs) =>
      `| ${label} | ${median(rs.map((r) => r.allocs_per_s)).toFixed(0)} | ` +
      `${rs.map((r) => r.allocs_per_s.toFixed(0)).join(", ")} | ` +
      `${median(rs.map((r) => r.p50_ms)).toFixed(1)} | ${median(rs.map((r) => r.p99_ms)).toFixed(1)} |`;
    const ratio = median(results.two.map((r) => r.allocs_per_s)) / median(results.one.map((r) => r.allocs_per_s));
    const cpu = os.cpus();
    console.log(
      [
        `## One vs two \`allot run-all\` instances behind the edge (hot allocation path)`,
        ``,
        `${cpu.length} × ${cpu[0]?.model ?? "cpu"}; wrk -t2 -c${CONNECTIONS} with scripts/bench.d/alloc.lua, ` +
          `${SECONDS} s per measurement after ${WARMUP_SECONDS} s of warm-up, ${ROUNDS} rounds interleaved; ` +
          `one product and denomination (${CARDS} cards); workerd (Miniflare), both origins, Postgres, ` +
          `Valkey and wrk share the machine. Every answer was 201.`,
        ``,
        `| ORIGINS.eu | allocations/s (median) | each round | p50 ms | p99 ms |`,
        `|---|---:|---|---:|---:|`,
        row("1 instance", results.one),
        row("2 instances", results.two),
        ``,
        `2 instances / 1 instance: ${ratio.toFixed(2)}×. With 2 instances the requests split ` +
          `${share.a} / ${share.b} (each origin's own access log). Cards left in the bucket: ${left}.`,
      ].join("\n"),
    );
  } finally {
    await one?.dispose();
    await two?.dispose();
    await b?.stop();
    await a?.stop();
  }
}

await main();
