// Smoke test: the built edge worker (edge/build) starts in Miniflare and answers.
// Builds nothing: run scripts/edge-build first.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";
import {
  assertEdgeBuilt,
  startEdge,
  COMPATIBILITY_DATE,
  DEFAULT_BINDINGS,
  DEFAULT_RATELIMITS,
  REPO_ROOT,
} from "./lib/edge.mjs";
import { startRecordingOrigin } from "./lib/recording-origin.mjs";

let edge;

before(async () => {
  assertEdgeBuilt(); // clear "run scripts/edge-build" error instead of a Miniflare stack trace
  edge = await startEdge();
});

after(async () => {
  await edge?.dispose();
});

test("the worker starts and answers /healthz", async (t) => {
  t.diagnostic(`miniflare startup ${edge.startupMs.toFixed(0)} ms`);
  const res = await edge.fetch("/healthz");
  assert.equal(res.status, 200);
  assert.equal((await res.json()).status, "pass");
});

test("per-request cf override does not break the worker", async () => {
  const res = await edge.fetch("/anything?x=1", { method: "POST", body: "{}", cf: { country: "US", colo: "IAD" } });
  assert.equal(res.status, 404);
  assert.equal((await res.json()).error.code, "NOT_FOUND");
});

test("wrangler.toml default env matches the helper's defaults", () => {
  // wrangler's own parser: the test harness and `wrangler dev/deploy` must see the same config.
  const require = createRequire(import.meta.url);
  const { unstable_getMiniflareWorkerOptions } = require("wrangler");
  const { workerOptions } = unstable_getMiniflareWorkerOptions(path.join(REPO_ROOT, "wrangler.toml"));
  assert.equal(workerOptions.compatibilityDate, COMPATIBILITY_DATE);
  const { EDGE_SIGNING_SECRET, ...vars } = DEFAULT_BINDINGS; // a secret: never in wrangler.toml
  assert.ok(EDGE_SIGNING_SECRET);
  assert.deepEqual(workerOptions.bindings, vars);
  const simple = Object.fromEntries(
    Object.entries(workerOptions.ratelimits ?? {}).map(([name, rl]) => [name, { simple: rl.simple }]),
  );
  assert.deepEqual(simple, DEFAULT_RATELIMITS);
});

test("every wrangler.toml environment is complete and its RL_* vars mirror its bindings", () => {
  const require = createRequire(import.meta.url);
  const { unstable_getMiniflareWorkerOptions } = require("wrangler");
  const { EDGE_SIGNING_SECRET, ...vars } = DEFAULT_BINDINGS;
  for (const env of [undefined, "staging", "production"]) {
    const { workerOptions: w } = unstable_getMiniflareWorkerOptions(path.join(REPO_ROOT, "wrangler.toml"), env);
    const name = env ?? "default";
    assert.deepEqual(Object.keys(w.bindings).sort(), Object.keys(vars).sort(), `${name}: vars`);
    assert.deepEqual(
      Object.keys(w.ratelimits ?? {}).sort(),
      Object.keys(DEFAULT_RATELIMITS).sort(),
      `${name}: ratelimits`,
    );
    const origins = JSON.parse(w.bindings.ORIGINS);
    assert.ok(origins[w.bindings.DEFAULT_REGION], `${name}: DEFAULT_REGION has an origin`);
    for (const url of Object.values(origins)) assert.match(url, /^https?:\/\/[^/]+$/, `${name}: ${url}`);
    const rl = w.ratelimits;
    assert.equal(rl.RL_KEY_DEFAULT.simple.limit, Number(w.bindings.RL_KEY_LIMIT), `${name}: RL_KEY_LIMIT`);
    assert.equal(rl.RL_KEY_DEFAULT.simple.period, Number(w.bindings.RL_KEY_PERIOD), `${name}: RL_KEY_PERIOD`);
    assert.equal(rl.RL_AUTH_FAIL_IP.simple.limit, Number(w.bindings.RL_AUTH_FAIL_LIMIT), `${name}: RL_AUTH_FAIL_LIMIT`);
    assert.equal(
      rl.RL_AUTH_FAIL_IP.simple.period,
      Number(w.bindings.RL_AUTH_FAIL_PERIOD),
      `${name}: RL_AUTH_FAIL_PERIOD`,
    );
  }
});

test("recording origin records requests and replays configured replies", async () => {
  const origin = await startRecordingOrigin();
  try {
    let res = await fetch(`${origin.url}/a?b=c`, {
      method: "PUT",
      headers: { "x-test": "1" },
      body: new Uint8Array([0, 1, 2]),
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");

    origin.respond({ status: 503, body: { error: "down" }, delayMs: 50 });
    const t0 = performance.now();
    res = await fetch(`${origin.url}/slow`);
    assert.ok(performance.now() - t0 >= 45);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { error: "down" });

    origin.respond((req) => ({ status: 201, body: `saw ${req.method} ${req.url}` }));
    res = await fetch(`${origin.url}/fn`, { method: "POST", body: "hi" });
    assert.equal(await res.text(), "saw POST /fn");

    const [put, slow, post] = await origin.waitForRequests(3);
    assert.equal(put.method, "PUT");
    assert.equal(put.url, "/a?b=c");
    assert.equal(put.headers["x-test"], "1");
    assert.deepEqual([...put.body], [0, 1, 2]);
    assert.equal(slow.method, "GET");
    assert.equal(post.text(), "hi");
  } finally {
    await origin.close();
  }
});
