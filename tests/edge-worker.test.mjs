// The edge worker (the real WASM build in Miniflare/workerd) against recording origins on 127.0.0.1:
// every route and error path, the signature, trace context, regions, caching, rate limits, retries
// and the access log. Builds nothing: run scripts/edge-build first.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, DEFAULT_BINDINGS, DEFAULT_RATELIMITS } from "./lib/edge.mjs";
import { startRecordingOrigin } from "./lib/recording-origin.mjs";
import { rawRequest } from "./lib/raw-http.mjs";
import {
  allocationBody,
  freePort,
  makeApiKey,
  parseTraceparent,
  randomHex,
  verifySignature,
  withBadChecksum,
} from "./lib/allot.mjs";

const SECRET = DEFAULT_BINDINGS.EDGE_SIGNING_SECRET;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The origin's successful allocation answer (shape only; the edge passes it through). */
function allocated(req) {
  return {
    status: 201,
    headers: { "content-type": "application/json", "x-request-id": req.headers["x-request-id"] ?? "" },
    body: { allocation_id: "0192f0c1-7c7e-7000-8000-000000000001", cards: [{ code: "DEMO-AAAA" }] },
  };
}

/** Routes like the real origin would, with per-path overrides. */
function originReplies(overrides = {}) {
  return (req) => {
    const path = req.url.split("?")[0];
    if (overrides[path]) return overrides[path](req);
    if (path === "/readyz") {
      return { status: 200, headers: { "content-type": "application/health+json" }, body: { status: "pass" } };
    }
    if (path === "/v1/allocations" && req.method === "POST") return allocated(req);
    if (path === "/v1/products") {
      return {
        status: 200,
        headers: { "content-type": "application/json", etag: '"cat-1"', "cache-control": "max-age=5" },
        body: { products: [{ id: "gift-usd", served_by: req.headers.host }] },
      };
    }
    if (path.startsWith("/v1/allocations/")) {
      return { status: 200, headers: { "content-type": "application/json" }, body: { id: path.split("/").pop() } };
    }
    return { status: 404, body: { error: { code: "NOT_FOUND", message: "origin 404" } } };
  };
}

function postAllocation(edge, { key, idem = randomHex(), body = allocationBody(), headers = {}, cf, ip } = {}) {
  const h = { "content-type": "application/json", ...headers };
  if (key !== undefined) h.authorization = `Bearer ${key}`;
  if (idem !== null) h["idempotency-key"] = idem;
  if (ip) h["cf-connecting-ip"] = ip;
  return edge.fetch("/v1/allocations", { method: "POST", headers: h, body, cf });
}

function get(edge, path, { key, headers = {}, cf, ip } = {}) {
  const h = { ...headers };
  if (key !== undefined) h.authorization = `Bearer ${key}`;
  if (ip) h["cf-connecting-ip"] = ip;
  return edge.fetch(path, { headers: h, cf });
}

async function errorOf(res, status, code) {
  const body = await res.json();
  assert.equal(res.status, status, JSON.stringify(body));
  assert.equal(body.error.code, code, JSON.stringify(body));
  assert.equal(typeof body.error.message, "string");
  assert.equal(body.error.request_id, res.headers.get("x-request-id"));
  assert.equal(res.headers.get("content-type"), "application/json");
  return body.error;
}

/** Wait until a fixed rate-limit window (aligned to the epoch, as Miniflare's is) has room left. */
async function freshWindow(periodSecs, needSecs = 8) {
  const left = periodSecs - ((Date.now() / 1000) % periodSecs);
  if (left < needSecs) await sleep(left * 1000 + 100);
}

describe("edge worker routes", () => {
  let eu, us, edge;
  const euKey = makeApiKey("eu");
  const usKey = makeApiKey("us");

  before(async () => {
    eu = await startRecordingOrigin(originReplies());
    us = await startRecordingOrigin(originReplies());
    edge = await startEdge({
      bindings: { ORIGINS: JSON.stringify({ eu: eu.url, us: us.url }), MAX_BODY_BYTES: "1024" },
    });
  });
  after(async () => {
    await edge?.dispose();
    await eu?.close();
    await us?.close();
  });
  const reset = () => {
    eu.reset();
    us.reset();
  };

  test("GET /healthz is answered in the isolate with colo and regions", async () => {
    reset();
    const res = await get(edge, "/healthz", { cf: { colo: "NRT" }, headers: { "cf-ray": "8a1b2c3d4e5f6789-NRT" } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/health+json");
    assert.equal(res.headers.get("x-request-id"), "8a1b2c3d4e5f6789-NRT");
    const h = await res.json();
    assert.equal(h.status, "pass");
    assert.equal(h.checks["edge:colo"][0].observedValue, "NRT");
    assert.equal(h.checks["edge:region"][0].observedValue, "eu");
    assert.deepEqual(h.checks["edge:regions"][0].observedValue, ["eu", "us"]);
    assert.equal(eu.requests.length + us.requests.length, 0);
  });

  test("GET /healthz survives a request.cf without colo or country", async () => {
    const res = await get(edge, "/healthz", { cf: { colo: undefined, country: undefined } });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).checks["edge:colo"][0].observedValue, "unknown");
  });

  test("operator paths, unknown paths and wrong methods are 404 and never forwarded", async () => {
    reset();
    const cases = [
      ["GET", "/"],
      ["GET", "/metrics"],
      ["GET", "/health"],
      ["GET", "/livez"],
      ["GET", "/v1/allocations/"],
      ["GET", "/v1/allocations/a%2F..%2Fproducts"],
      ["PUT", "/v1/allocations"],
      ["DELETE", "/v1/allocations/abc"],
      ["POST", "/healthz"],
      ["POST", "/v1/products"],
      ["POST", "/v1/openapi.json"],
      ["GET", "/openapi.json"],
      ["PATCH", "/readyz"],
      ["GET", "/v1/products/"],
      ["GET", "/V1/PRODUCTS"],
    ];
    for (const [method, path] of cases) {
      const res = await edge.fetch(path, {
        method,
        headers: { authorization: `Bearer ${euKey.key}`, "idempotency-key": "k" },
        body: method === "GET" ? undefined : "{}",
      });
      const err = await errorOf(res, 404, "NOT_FOUND");
      assert.match(err.message, /no route/, `${method} ${path}`);
    }
    assert.equal(eu.requests.length + us.requests.length, 0);
  });

  test("POST /v1/allocations is signed, traced, and forwarded byte for byte to the key's region", async () => {
    reset();
    // Odd spacing, key order and non-ASCII: the origin must get exactly these bytes.
    const body =
      '{ "quantity":2,\n "product_id" : "gift-usd", "denomination":"25.00", "client_reference":"bestellung für Anna ✓" }';
    const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const res = await postAllocation(edge, {
      key: euKey.key,
      idem: "order-42",
      body,
      headers: { traceparent: incoming, tracestate: "vendor=x", "cf-ray": "7f00aa11bb22cc33-FRA", cookie: "session=1" },
      cf: { country: "JP", colo: "NRT" },
    });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("x-request-id"), "7f00aa11bb22cc33-FRA");
    assert.equal(res.headers.get("ratelimit-policy"), '"default";q=100;w=60');
    assert.equal(res.headers.get("cache-control"), "no-store");
    assert.deepEqual((await res.json()).cards, [{ code: "DEMO-AAAA" }]);

    assert.equal(us.requests.length, 0);
    const [req] = await eu.waitForRequests(1);
    assert.equal(eu.requests.length, 1);
    assert.equal(req.method, "POST");
    assert.equal(req.url, "/v1/allocations");
    assert.ok(req.body.equals(Buffer.from(body, "utf8")), "body forwarded byte for byte");
    verifySignature(req.headers, SECRET, "POST", "/v1/allocations", req.body);
    assert.equal(req.headers.authorization, `Bearer ${euKey.key}`);
    assert.equal(req.headers["idempotency-key"], "order-42");
    assert.equal(req.headers["x-request-id"], "7f00aa11bb22cc33-FRA");
    assert.equal(req.headers["allot-client-country"], "JP");
    assert.equal(req.headers["allot-edge-colo"], "NRT");
    assert.equal(req.headers.tracestate, "vendor=x");
    assert.equal(req.headers.cookie, undefined, "caller headers are not passed on wholesale");
    const tp = parseTraceparent(req.headers.traceparent);
    assert.ok(tp, req.headers.traceparent);
    assert.equal(tp.traceId, "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert.notEqual(tp.parentId, "00f067aa0ba902b7", "new span");
    assert.equal(tp.flags, "01");
  });

  test("a trace is started when traceparent is absent or invalid; request ids are generated without cf-ray", async () => {
    for (const traceparent of [undefined, "00-zz-yy-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"]) {
      reset();
      const headers = traceparent ? { traceparent, tracestate: "dropped=1" } : {};
      const res = await postAllocation(edge, { key: euKey.key, headers });
      assert.equal(res.status, 201);
      await res.arrayBuffer();
      const rid = res.headers.get("x-request-id");
      assert.match(rid, /^[0-9a-f]{32}$/);
      const [req] = await eu.waitForRequests(1);
      assert.equal(req.headers["x-request-id"], rid);
      const tp = parseTraceparent(req.headers.traceparent);
      assert.ok(tp, `created traceparent: ${req.headers.traceparent}`);
      assert.notEqual(tp.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
      assert.equal(req.headers.tracestate, undefined);
    }
  });

  test("the key's home region picks the origin; GETs are signed over path and query", async () => {
    reset();
    let res = await get(edge, "/v1/allocations/0192f0c1-7c7e-7000-8000-000000000001?expand=cards&x=%20y", {
      key: usKey.key,
    });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    assert.equal(eu.requests.length, 0);
    const [req] = await us.waitForRequests(1);
    assert.equal(req.method, "GET");
    assert.equal(req.url, "/v1/allocations/0192f0c1-7c7e-7000-8000-000000000001?expand=cards&x=%20y");
    assert.equal(req.body.length, 0);
    verifySignature(req.headers, SECRET, "GET", req.url, req.body);

    res = await postAllocation(edge, { key: euKey.key });
    assert.equal(res.status, 201);
    await res.arrayBuffer();
    assert.equal(eu.requests.length, 1);
    assert.equal(us.requests.length, 1);
  });

  test("a key whose region has no origin is 403 FORBIDDEN, not forwarded", async () => {
    reset();
    const err = await errorOf(await postAllocation(edge, { key: makeApiKey("ap").key }), 403, "FORBIDDEN");
    assert.match(err.message, /no origin serves region ap/);
    assert.equal(eu.requests.length + us.requests.length, 0);
  });

  test("bad or missing API keys are 401 without contacting an origin", async () => {
    reset();
    const cases = [
      undefined,
      "",
      "not-a-key",
      withBadChecksum(euKey.key),
      euKey.key.slice(0, -1),
      `${euKey.key}x`,
      "allot_EU_abc_def",
    ];
    for (const key of cases) {
      const res = await postAllocation(edge, { key, ip: "198.51.100.1" });
      await errorOf(res, 401, "UNAUTHORIZED");
      const res2 = await get(edge, "/v1/products", { key, ip: "198.51.100.1" });
      await errorOf(res2, 401, "UNAUTHORIZED");
    }
    const basic = await edge.fetch("/v1/products", { headers: { authorization: `Basic ${euKey.key}` } });
    await errorOf(basic, 401, "UNAUTHORIZED");
    assert.equal(eu.requests.length + us.requests.length, 0);
  });

  test("POST checks Idempotency-Key, body size and body, with the origin's error bodies, before forwarding", async () => {
    reset();
    let err = await errorOf(
      await postAllocation(edge, { key: euKey.key, idem: null }),
      400,
      "IDEMPOTENCY_KEY_REQUIRED",
    );
    err = await errorOf(await postAllocation(edge, { key: euKey.key, idem: "has space" }), 400, "VALIDATION_FAILED");
    assert.equal(err.details.field, "Idempotency-Key");
    err = await errorOf(
      await postAllocation(edge, { key: euKey.key, idem: "k".repeat(256) }),
      400,
      "VALIDATION_FAILED",
    );
    assert.equal(err.details.field, "Idempotency-Key");

    const bodies = [
      ["{not json", "body"],
      ["[1,2]", "body"],
      ["", "body"],
      [allocationBody({ quantity: 21 }), "quantity"],
      [allocationBody({ quantity: 0 }), "quantity"],
      [allocationBody({ quantity: "1" }), "quantity"],
      [allocationBody({ denomination: "abc" }), "denomination"],
      [allocationBody({ product_id: "-bad" }), "product_id"],
      [allocationBody({ surprise: true }), "body"],
      [JSON.stringify({ denomination: "25.00", quantity: 1 }), "product_id"],
    ];
    for (const [body, field] of bodies) {
      err = await errorOf(await postAllocation(edge, { key: euKey.key, body }), 400, "VALIDATION_FAILED");
      assert.equal(err.details.field, field, body);
    }

    // 413 from the declared Content-Length (1024 here) and from the bytes of a chunked body.
    err = await errorOf(
      await postAllocation(edge, { key: euKey.key, body: "x".repeat(1025) }),
      413,
      "PAYLOAD_TOO_LARGE",
    );
    assert.match(err.message, /at most 1024 bytes/);
    const chunked = new ReadableStream({
      start(c) {
        for (let i = 0; i < 20; i++) c.enqueue(new TextEncoder().encode("y".repeat(100)));
        c.close();
      },
    });
    const res = await edge.fetch("/v1/allocations", {
      method: "POST",
      headers: { authorization: `Bearer ${euKey.key}`, "idempotency-key": "chunked" },
      body: chunked,
      duplex: "half",
    });
    await errorOf(res, 413, "PAYLOAD_TOO_LARGE");
    assert.equal(eu.requests.length + us.requests.length, 0);
  });

  test("different cf countries and colos are passed through", async () => {
    reset();
    const seen = [];
    for (const [country, colo] of [
      ["US", "IAD"],
      ["BR", "GRU"],
      ["DE", "FRA"],
    ]) {
      const res = await postAllocation(edge, { key: euKey.key, cf: { country, colo } });
      assert.equal(res.status, 201);
      await res.arrayBuffer();
      seen.push([country, colo]);
    }
    await eu.waitForRequests(3);
    assert.deepEqual(
      eu.requests.map((r) => [r.headers["allot-client-country"], r.headers["allot-edge-colo"]]),
      seen,
    );
  });

  test("one JSON log line per request, with ids and timings and nothing secret", async () => {
    edge.logs.length = 0;
    const res = await postAllocation(edge, {
      key: euKey.key,
      headers: { "cf-ray": "1234abcd5678ef90-AMS" },
      cf: { colo: "AMS" },
    });
    await res.arrayBuffer();
    const bad = await postAllocation(edge, { key: withBadChecksum(euKey.key), ip: "198.51.100.77" });
    await bad.arrayBuffer();
    await sleep(100); // log lines arrive through workerd's stdout
    const lines = edge.logs.filter((l) => l.msg === "request");
    assert.equal(lines.length, 2, JSON.stringify(edge.logs));
    const [ok, refused] = lines;
    assert.equal(ok.request_id, "1234abcd5678ef90-AMS");
    assert.match(ok.trace_id, /^[0-9a-f]{32}$/);
    assert.equal(ok.route, "POST /v1/allocations");
    assert.equal(ok.status, 201);
    assert.equal(typeof ok.duration_ms, "number");
    assert.equal(ok.region, "eu");
    assert.equal(ok.colo, "AMS");
    assert.equal(ok.key_id, euKey.keyId);
    assert.equal(ok.origin_attempts, 1);
    assert.equal(refused.status, 401);
    assert.equal(refused.error_code, "UNAUTHORIZED");
    const all = JSON.stringify(edge.logs);
    assert.ok(!all.includes(euKey.secret), "no key secret in logs");
    assert.ok(!all.includes("DEMO-AAAA"), "no card code in logs");
    assert.ok(!all.includes("gift-usd"), "no body in logs");
  });

  test("junk never crashes the worker: every answer is the shared error body", async () => {
    const junk = [
      [
        "/v1/allocations",
        { method: "POST", headers: { authorization: "Bearer \u00ff\u00fe" }, body: new Uint8Array([0, 255, 1]) },
      ],
      [
        "/v1/allocations",
        {
          method: "POST",
          headers: { authorization: `Bearer ${euKey.key}`, "idempotency-key": "k" },
          body: new Uint8Array([0xff, 0xfe, 0]),
        },
      ],
      [`/${"a".repeat(8000)}`, {}],
      ["/v1/products?%ZZ=%%", { headers: { authorization: "Bearer " + "x".repeat(4000) } }],
      ["/readyz?region=%00", {}],
      ["/readyz?region=" + "a".repeat(300), {}],
      ["/v1/allocations/" + "é".repeat(10), { headers: { authorization: `Bearer ${euKey.key}` } }],
      ["/healthz", { headers: { traceparent: "ff-" + "f".repeat(100), "cf-ray": "\t" } }],
    ];
    for (const [path, init] of junk) {
      const res = await edge.fetch(path, init);
      const text = await res.text();
      assert.ok(res.status < 500, `${path.slice(0, 40)}: ${res.status} ${text.slice(0, 200)}`);
      if (res.status >= 400) assert.ok(JSON.parse(text).error.code, text);
    }
    const res = await get(edge, "/healthz");
    assert.equal(res.status, 200);
    await res.arrayBuffer();
  });
});

describe("origin failures: retry once, then 503 ORIGIN_UNAVAILABLE", () => {
  let origin, edge;
  const key = makeApiKey("eu").key;

  before(async () => {
    origin = await startRecordingOrigin(originReplies());
    edge = await startEdge({
      bindings: { ORIGINS: JSON.stringify({ eu: origin.url }), ORIGIN_TIMEOUT_MS: "400" },
    });
  });
  after(async () => {
    await edge?.dispose();
    await origin?.close();
  });

  function failFirst(n, status) {
    let left = n;
    return (req) => (left-- > 0 ? { status, body: "upstream trouble" } : originReplies()(req));
  }

  test("503 then success: the caller gets the success, the origin saw two signed attempts", async () => {
    origin.reset();
    origin.respond(failFirst(1, 503));
    const res = await postAllocation(edge, { key, idem: "retry-1" });
    assert.equal(res.status, 201);
    await res.arrayBuffer();
    const [a, b] = await origin.waitForRequests(2);
    assert.equal(origin.requests.length, 2);
    const signed = [a, b].map((r) => {
      assert.equal(r.headers["idempotency-key"], "retry-1");
      return verifySignature(r.headers, SECRET, "POST", "/v1/allocations", r.body);
    });
    assert.ok(a.body.equals(b.body));
    // Each attempt is signed afresh: another nonce, so another MAC, which a replay guard keyed on
    // the MAC does not take for a replay.
    assert.notEqual(signed[0].nonce, signed[1].nonce);
    assert.notEqual(a.headers["allot-signature"], b.headers["allot-signature"]);
  });

  test("502 on a GET is retried too", async () => {
    origin.reset();
    origin.respond(failFirst(1, 502));
    const res = await get(edge, "/v1/allocations/abc-1", { key });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    assert.equal(origin.requests.length, 2);
  });

  test("503 twice: 503 ORIGIN_UNAVAILABLE with Retry-After, exactly two attempts", async () => {
    origin.reset();
    origin.respond(failFirst(5, 503));
    const res = await postAllocation(edge, { key });
    await errorOf(res, 503, "ORIGIN_UNAVAILABLE");
    assert.equal(res.headers.get("retry-after"), "2");
    assert.equal(origin.requests.length, 2);
  });

  test("504 twice on a GET: 503 ORIGIN_UNAVAILABLE", async () => {
    origin.reset();
    origin.respond(failFirst(5, 504));
    await errorOf(await get(edge, "/v1/products", { key }), 503, "ORIGIN_UNAVAILABLE");
    assert.equal(origin.requests.length, 2);
  });

  test("a 500 or 409 from the origin is passed back as is, not retried", async () => {
    for (const [status, code] of [
      [500, "INTERNAL"],
      [409, "OUT_OF_STOCK"],
    ]) {
      origin.reset();
      const body = { error: { code, message: "from origin", request_id: "x" } };
      origin.respond({ status, body, headers: { "retry-after": "7" } });
      const res = await postAllocation(edge, { key });
      assert.equal(res.status, status);
      assert.equal(res.headers.get("retry-after"), "7");
      assert.deepEqual(await res.json(), body);
      assert.equal(origin.requests.length, 1);
    }
    origin.respond(originReplies());
  });

  test("a slow origin times out (bounded) without a retry", async () => {
    origin.reset();
    origin.respond({ status: 201, body: "{}", delayMs: 2000 });
    const t0 = performance.now();
    const res = await postAllocation(edge, { key });
    await errorOf(res, 503, "ORIGIN_UNAVAILABLE");
    const took = performance.now() - t0;
    assert.ok(took < 1500, `took ${took.toFixed(0)} ms with a 400 ms timeout`);
    assert.equal(origin.requests.length, 1);
    origin.respond(originReplies());
  });

  test("an unreachable origin is retried once, then 503", async () => {
    const port = await freePort(); // nothing listens here
    const dead = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: `http://127.0.0.1:${port}` }) } });
    try {
      const res = await postAllocation(dead, { key });
      await errorOf(res, 503, "ORIGIN_UNAVAILABLE");
      await sleep(100);
      const line = dead.logs.find((l) => l.msg === "request");
      assert.equal(line.origin_attempts, 2);
      assert.equal(line.origin_outcome, "unreachable");
    } finally {
      await dead.dispose();
    }
  });
});

describe("edge caches: /readyz and /v1/products", () => {
  let eu, us, edge;
  let readyBody = { status: "pass", checks: { "postgres:primary": [{ status: "pass" }] } };
  let readyStatus = 200;

  before(async () => {
    const readyz = () => ({
      status: readyStatus,
      headers: { "content-type": "application/health+json" },
      body: readyBody,
    });
    eu = await startRecordingOrigin(originReplies({ "/readyz": readyz }));
    us = await startRecordingOrigin(originReplies({ "/readyz": readyz }));
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: eu.url, us: us.url }) } });
  });
  after(async () => {
    await edge?.dispose();
    await eu?.close();
    await us?.close();
  });
  const count = (o, path) => o.requests.filter((r) => r.url.split("?")[0] === path).length;

  test("a probe storm on /readyz reaches the origin once", async () => {
    eu.reset();
    const first = await get(edge, "/readyz");
    assert.equal(first.status, 200);
    assert.equal(first.headers.get("allot-edge-cache"), "miss");
    const doc = await first.json();
    assert.equal(doc.status, "pass");
    assert.ok(doc.checks["postgres:primary"] && doc.checks["origin:eu"]);
    const probes = await Promise.all(Array.from({ length: 50 }, () => get(edge, "/readyz")));
    for (const p of probes) {
      assert.equal(p.status, 200);
      assert.equal(p.headers.get("allot-edge-cache"), "hit");
      assert.equal(p.headers.get("content-type"), "application/health+json");
      assert.deepEqual(await p.json(), doc);
    }
    assert.equal(count(eu, "/readyz"), 1);
    const [req] = eu.requests;
    assert.equal(req.headers.authorization, undefined, "no caller credentials on /readyz");
    verifySignature(req.headers, SECRET, "GET", "/readyz", req.body);
  });

  test("/readyz?region= picks the origin; unknown and malformed regions are refused", async () => {
    us.reset();
    readyStatus = 503;
    readyBody = { status: "fail", checks: { "postgres:primary": [{ status: "fail", output: "down" }] } };
    const res = await get(edge, "/readyz?region=us");
    assert.equal(res.status, 503);
    assert.equal((await res.json()).status, "fail");
    const again = await get(edge, "/readyz?region=us");
    assert.equal(again.status, 503);
    assert.equal(again.headers.get("allot-edge-cache"), "hit");
    await again.arrayBuffer();
    assert.equal(count(us, "/readyz"), 1);
    await errorOf(await get(edge, "/readyz?region=ap"), 404, "NOT_FOUND");
    await errorOf(await get(edge, "/readyz?region=EU"), 400, "VALIDATION_FAILED");
    readyStatus = 200;
    readyBody = { status: "pass" };
  });

  test("/readyz is 503 with a health body when the origin is unreachable", async () => {
    const port = await freePort();
    const dead = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: `http://127.0.0.1:${port}` }) } });
    try {
      const res = await get(dead, "/readyz");
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("content-type"), "application/health+json");
      const doc = await res.json();
      assert.equal(doc.status, "fail");
      assert.match(doc.checks["origin:eu"][0].output, /unreachable/);
    } finally {
      await dead.dispose();
    }
  });

  test("/v1/products is cached per region and key, after the key checks", async () => {
    eu.reset();
    us.reset();
    const a = makeApiKey("eu");
    const b = makeApiKey("us");
    const r1 = await get(edge, "/v1/products", { key: a.key });
    assert.equal(r1.status, 200);
    assert.equal(r1.headers.get("allot-edge-cache"), "miss");
    const body1 = await r1.json();
    const r2 = await get(edge, "/v1/products", { key: a.key });
    assert.equal(r2.status, 200);
    assert.equal(r2.headers.get("allot-edge-cache"), "hit");
    assert.equal(r2.headers.get("etag"), '"cat-1"');
    assert.equal(r2.headers.get("cache-control"), "max-age=5");
    assert.notEqual(r2.headers.get("x-request-id"), r1.headers.get("x-request-id"));
    assert.deepEqual(await r2.json(), body1);
    assert.equal(count(eu, "/v1/products"), 1);

    // Another region's key: its own origin, its own entry (nothing leaks across regions).
    const r3 = await get(edge, "/v1/products", { key: b.key });
    assert.equal(r3.headers.get("allot-edge-cache"), "miss");
    assert.notDeepEqual(await r3.json(), body1);
    assert.equal(count(us, "/v1/products"), 1);

    // Another query is another entry.
    const r4 = await get(edge, "/v1/products?currency=USD", { key: a.key });
    assert.equal(r4.headers.get("allot-edge-cache"), "miss");
    await r4.arrayBuffer();
    assert.equal(count(eu, "/v1/products"), 2);

    // A made-up key of the same region does not read a.key's entry: it goes to the origin.
    const made = makeApiKey("eu");
    const r5 = await get(edge, "/v1/products", { key: made.key });
    assert.equal(r5.headers.get("allot-edge-cache"), "miss");
    await r5.arrayBuffer();
    assert.equal(count(eu, "/v1/products"), 3);

    // Key checks still run before the cache.
    await errorOf(await get(edge, "/v1/products", { key: withBadChecksum(a.key) }), 401, "UNAUTHORIZED");

    // Conditional requests are answered at the edge.
    const r6 = await get(edge, "/v1/products", { key: a.key, headers: { "if-none-match": '"cat-1"' } });
    assert.equal(r6.status, 304);
    assert.equal(r6.headers.get("etag"), '"cat-1"');
    await r6.arrayBuffer();
    assert.equal(count(eu, "/v1/products"), 3);
    assert.equal(eu.requests.find((r) => r.url === "/v1/products").headers["if-none-match"], undefined);
  });

  test("only 200s are cached", async () => {
    eu.reset();
    const k = makeApiKey("eu").key;
    let n = 0;
    eu.respond((req) =>
      n++ === 0 ? { status: 500, body: { error: { code: "INTERNAL", message: "x" } } } : originReplies()(req),
    );
    const r1 = await get(edge, "/v1/products", { key: k });
    assert.equal(r1.status, 500);
    await r1.arrayBuffer();
    const r2 = await get(edge, "/v1/products", { key: k });
    assert.equal(r2.status, 200);
    assert.equal(r2.headers.get("allot-edge-cache"), "miss");
    await r2.arrayBuffer();
    assert.equal(count(eu, "/v1/products"), 2);
  });

  test("the cache expires after its TTL", { timeout: 15_000 }, async () => {
    eu.reset();
    const k = makeApiKey("eu").key;
    const r1 = await get(edge, "/v1/products", { key: k });
    await r1.arrayBuffer();
    await sleep(5_300);
    const r2 = await get(edge, "/v1/products", { key: k });
    assert.equal(r2.headers.get("allot-edge-cache"), "miss");
    await r2.arrayBuffer();
    assert.equal(count(eu, "/v1/products"), 2);
  });
});

describe("rate limits", () => {
  let origin, edge;

  before(async () => {
    origin = await startRecordingOrigin(originReplies());
    edge = await startEdge({
      bindings: {
        ORIGINS: JSON.stringify({ eu: origin.url }),
        RL_KEY_LIMIT: "3",
        RL_KEY_PERIOD: "60",
        RL_AUTH_FAIL_LIMIT: "3",
        RL_AUTH_FAIL_PERIOD: "60",
      },
      ratelimits: {
        RL_KEY_DEFAULT: { simple: { limit: 3, period: 60 } },
        RL_AUTH_FAIL_IP: { simple: { limit: 3, period: 60 } },
      },
    });
  });
  after(async () => {
    await edge?.dispose();
    await origin?.close();
  });

  test("a key over its quota gets 429 with Retry-After and the IETF fields; other keys are unaffected", async () => {
    await freshWindow(60);
    origin.reset();
    const a = makeApiKey("eu").key;
    for (let i = 0; i < 3; i++) {
      const res = await postAllocation(edge, { key: a });
      assert.equal(res.status, 201);
      assert.equal(res.headers.get("ratelimit-policy"), '"default";q=3;w=60');
      await res.arrayBuffer();
    }
    const res = await postAllocation(edge, { key: a });
    const err = await errorOf(res, 429, "RATE_LIMITED");
    assert.equal(err.details.policy, "default");
    const retryAfter = Number(res.headers.get("retry-after"));
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`);
    assert.equal(res.headers.get("ratelimit-policy"), '"default";q=3;w=60');
    assert.equal(res.headers.get("ratelimit"), `"default";r=0;t=${retryAfter}`);
    // GETs count against the same key.
    await errorOf(await get(edge, "/v1/products", { key: a }), 429, "RATE_LIMITED");
    assert.equal(origin.requests.length, 3);

    const b = makeApiKey("eu").key;
    const ok = await postAllocation(edge, { key: b });
    assert.equal(ok.status, 201);
    await ok.arrayBuffer();
    assert.equal(origin.requests.length, 4);
  });

  test("an IP over its failed-authentication quota gets 429 before any key check", async () => {
    await freshWindow(60);
    origin.reset();
    const ip = "203.0.113.9";
    for (let i = 0; i < 3; i++) {
      await errorOf(await postAllocation(edge, { key: "junk", ip }), 401, "UNAUTHORIZED");
    }
    const res = await postAllocation(edge, { key: "junk", ip });
    await errorOf(res, 429, "RATE_LIMITED");
    assert.equal(res.headers.get("ratelimit-policy"), '"auth-failures";q=3;w=60');
    assert.ok(Number(res.headers.get("retry-after")) >= 1);
    // Now even a well-formed key from that IP is refused without any check or origin contact.
    const good = makeApiKey("eu").key;
    const blocked = await postAllocation(edge, { key: good, ip });
    const err = await errorOf(blocked, 429, "RATE_LIMITED");
    assert.equal(err.details.policy, "auth-failures");
    assert.equal(origin.requests.length, 0);
    // Another IP is fine.
    const other = await postAllocation(edge, { key: good, ip: "203.0.113.10" });
    assert.equal(other.status, 201);
    await other.arrayBuffer();
    assert.equal(origin.requests.length, 1);
  });

  test("origin 401s (well-formed but unknown keys) count as failed authentications", async () => {
    await freshWindow(60);
    origin.reset();
    origin.respond({ status: 401, body: { error: { code: "UNAUTHORIZED", message: "unknown API key" } } });
    const ip = "203.0.113.20";
    for (let i = 0; i < 4; i++) {
      // Fresh keys each time: the per-key limit is not what stops this.
      const res = await postAllocation(edge, { key: makeApiKey("eu").key, ip });
      assert.equal(res.status, 401);
      assert.equal((await res.json()).error.code, "UNAUTHORIZED");
    }
    await errorOf(await postAllocation(edge, { key: makeApiKey("eu").key, ip }), 429, "RATE_LIMITED");
    assert.equal(origin.requests.length, 4);
    origin.respond(originReplies());
  });
});

test("DEFAULT_RATELIMITS mirror the RL_* vars", () => {
  assert.equal(DEFAULT_RATELIMITS.RL_KEY_DEFAULT.simple.limit, Number(DEFAULT_BINDINGS.RL_KEY_LIMIT));
  assert.equal(DEFAULT_RATELIMITS.RL_KEY_DEFAULT.simple.period, Number(DEFAULT_BINDINGS.RL_KEY_PERIOD));
  assert.equal(DEFAULT_RATELIMITS.RL_AUTH_FAIL_IP.simple.limit, Number(DEFAULT_BINDINGS.RL_AUTH_FAIL_LIMIT));
  assert.equal(DEFAULT_RATELIMITS.RL_AUTH_FAIL_IP.simple.period, Number(DEFAULT_BINDINGS.RL_AUTH_FAIL_PERIOD));
});

test("a misconfigured edge fails /healthz and /readyz and answers 500 on the API, details only in its log", async () => {
  const edge = await startEdge({ bindings: { ORIGINS: "{not json", EDGE_SIGNING_SECRET: "short" } });
  try {
    const h = await edge.fetch("/healthz");
    assert.equal(h.status, 503);
    const doc = await h.json();
    assert.equal(doc.status, "fail");
    assert.doesNotMatch(JSON.stringify(doc), /ORIGINS|SECRET/);
    const r = await edge.fetch("/readyz");
    assert.equal(r.status, 503);
    await r.arrayBuffer();
    const res = await postAllocation(edge, { key: makeApiKey("eu").key });
    const err = await errorOf(res, 500, "INTERNAL");
    assert.equal(err.message, "internal error");
    await sleep(100);
    assert.ok(
      edge.logs.some((l) => l.level === "error" && /ORIGINS/.test(l.error)),
      JSON.stringify(edge.logs),
    );
  } finally {
    await edge.dispose();
  }
});

describe("request bodies: deadline and broken streams (raw HTTP to workerd)", () => {
  // `edge` has a short deadline for the bodies that never come; `patient` the default (10 s), for
  // the bodies that do, so a loaded machine cannot make them late.
  let origin, edge, patient;
  const key = makeApiKey("eu").key;
  const head = (extra = []) => [
    ["authorization", `Bearer ${key}`],
    ["idempotency-key", `raw-${randomHex()}`],
    ["content-type", "application/json"],
    ["cf-connecting-ip", "198.51.100.200"],
    ...extra,
  ];

  before(async () => {
    origin = await startRecordingOrigin(originReplies());
    // A short server-side deadline; the clients below wait far longer, so load cannot flake them.
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: origin.url }), BODY_TIMEOUT_MS: "300" } });
    patient = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: origin.url }) } });
  });
  after(async () => {
    await edge?.dispose();
    await patient?.dispose();
    await origin?.close();
  });

  /** A raw `POST /v1/allocations` to `target` with the head above plus `headers`. */
  const postRaw = (target, { headers = [], ...rest }) =>
    rawRequest(target, { method: "POST", path: "/v1/allocations", headers: head(headers), ...rest });

  function assertShape(res, status, code) {
    assert.equal(res.status, status, res.text());
    assert.equal(res.headers["content-type"], "application/json");
    const body = res.json();
    assert.deepEqual(Object.keys(body), ["error"]);
    const keys = Object.keys(body.error).filter((k) => k !== "details");
    assert.deepEqual(keys.sort(), ["code", "message", "request_id"]);
    assert.equal(body.error.code, code);
    assert.equal(body.error.request_id, res.headers["x-request-id"]);
    return body.error;
  }

  test("a whole body on a connection held open is answered at once (workerd streams bodies)", async () => {
    // The premise of the tests below: Miniflare's listener is workerd's own HTTP socket, and workerd
    // runs the worker as soon as the head has arrived, handing it the body as a stream (as deployed
    // workers do; only `wrangler dev --remote` buffers uploads first: workers-sdk issue 9144). So a
    // stalled body reaches the worker's deadline, not a buffer's. A complete body on a held socket
    // is answered without waiting for the connection to close.
    origin.reset();
    const body = allocationBody();
    const res = await postRaw(patient.url, {
      headers: [["content-length", String(Buffer.byteLength(body))]],
      body,
      then: "hold",
    });
    assert.equal(res.status, 201, res.text());
    assert.equal(origin.requests.length, 1);
  });

  test("a declared body that never comes is 408 REQUEST_TIMEOUT, nothing forwarded", async () => {
    origin.reset();
    const res = await postRaw(edge.url, {
      headers: [["content-length", "100"]],
      then: "hold",
    });
    const err = assertShape(res, 408, "REQUEST_TIMEOUT");
    assert.equal(err.message, "the body did not arrive within 300 ms");
    assert.equal(res.headers["cache-control"], "no-store");
    await sleep(200);
    assert.equal(origin.requests.length, 0);
  });

  test("a body that stalls half-way is 408, by Content-Length or chunked", async () => {
    origin.reset();
    const partial = allocationBody().slice(0, 20);
    const byLength = await postRaw(edge.url, {
      headers: [["content-length", "200"]],
      body: partial,
      then: "hold",
    });
    assertShape(byLength, 408, "REQUEST_TIMEOUT");
    const chunked = await postRaw(edge.url, {
      headers: [["transfer-encoding", "chunked"]],
      body: `${partial.length.toString(16)}\r\n${partial}\r\n`,
      then: "hold",
    });
    assertShape(chunked, 408, "REQUEST_TIMEOUT");
    // A trickle does not reset the deadline: it covers the whole body.
    assertShape(await trickle(edge.url, head(), Array(8).fill("    "), 100, false), 408, "REQUEST_TIMEOUT");
    await sleep(200);
    assert.equal(origin.requests.length, 0);
  });

  test("a body cut off by the client (half-close mid-body) stays 400 VALIDATION_FAILED", async () => {
    origin.reset();
    const res = await postRaw(edge.url, {
      headers: [["content-length", "200"]],
      body: allocationBody().slice(0, 20),
      then: "end",
    });
    const err = assertShape(res, 400, "VALIDATION_FAILED");
    assert.equal(err.message, "body: could not be read (the connection failed mid-body)");
    assert.equal(err.details.field, "body");
    await sleep(200);
    assert.equal(origin.requests.length, 0);
  });

  test("the deadline does not touch a body that arrives in time, in pieces", async () => {
    origin.reset();
    const body = allocationBody();
    const res = await trickle(patient.url, head(), [body.slice(0, 20), body.slice(20)], 200, true);
    assert.equal(res.status, 201, res.text());
    const [req] = await origin.waitForRequests(1);
    assert.ok(req.body.equals(Buffer.from(body)));
  });
});

/** A chunked POST /v1/allocations whose chunks are written `gapMs` apart; the body ends only if `end`. */
function trickle(base, headers, chunks, gapMs, end) {
  const frame = (c) => `${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`;
  return rawRequest(base, {
    method: "POST",
    path: "/v1/allocations",
    headers: [["transfer-encoding", "chunked"], ...headers],
    pieces: [...chunks.map(frame), ...(end ? ["0\r\n\r\n"] : [])],
    gapMs,
    then: "hold",
  });
}

describe("rate-limit fields from the origin pass through", () => {
  let origin, edge;
  const key = makeApiKey("eu").key;
  const originPolicy = '"client";q=50;w=60';

  before(async () => {
    origin = await startRecordingOrigin(originReplies());
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: origin.url }) } });
  });
  after(async () => {
    await edge?.dispose();
    await origin?.close();
  });

  test("an origin 429: status, body, Retry-After and RateLimit as sent; both policies, the edge's first", async () => {
    origin.reset();
    const body = {
      error: { code: "RATE_LIMITED", message: "rate limit exceeded; retry in 17 s", request_id: "o-1" },
    };
    origin.respond({
      status: 429,
      headers: { "ratelimit-policy": originPolicy, ratelimit: '"client";r=0;t=17', "retry-after": "17" },
      body,
    });
    const res = await postAllocation(edge, { key, ip: "198.51.100.50" });
    assert.equal(res.status, 429);
    assert.deepEqual(await res.json(), body);
    assert.equal(res.headers.get("retry-after"), "17");
    assert.equal(res.headers.get("ratelimit"), '"client";r=0;t=17');
    assert.equal(res.headers.get("ratelimit-policy"), `"default";q=100;w=60, ${originPolicy}`);
    assert.equal(origin.requests.length, 1, "a 429 is not retried");

    // A GET too, and not counted as a failed authentication.
    const got = await get(edge, "/v1/allocations/abc", { key, ip: "198.51.100.50" });
    assert.equal(got.status, 429);
    assert.equal(got.headers.get("ratelimit-policy"), `"default";q=100;w=60, ${originPolicy}`);
    await got.arrayBuffer();
    origin.respond(originReplies());
  });

  test("a success carrying the origin's fields passes them back too; without them only the edge's policy", async () => {
    origin.reset();
    origin.respond((req) => {
      const r = allocated(req);
      r.headers = { ...r.headers, "ratelimit-policy": originPolicy, ratelimit: '"client";r=41;t=30' };
      return r;
    });
    const res = await postAllocation(edge, { key });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("ratelimit"), '"client";r=41;t=30');
    assert.equal(res.headers.get("ratelimit-policy"), `"default";q=100;w=60, ${originPolicy}`);
    await res.arrayBuffer();

    origin.respond(originReplies());
    const plain = await postAllocation(edge, { key });
    assert.equal(plain.status, 201);
    assert.equal(plain.headers.get("ratelimit"), null);
    assert.equal(plain.headers.get("ratelimit-policy"), '"default";q=100;w=60');
    await plain.arrayBuffer();
  });

  test("a cached catalogue does not replay the origin's quota state", async () => {
    origin.reset();
    const k = makeApiKey("eu").key;
    origin.respond(
      originReplies({
        "/v1/products": () => ({
          status: 200,
          headers: {
            "content-type": "application/json",
            "cache-control": "max-age=5",
            "ratelimit-policy": originPolicy,
            ratelimit: '"client";r=9;t=5',
          },
          body: { products: [] },
        }),
      }),
    );
    const miss = await get(edge, "/v1/products", { key: k });
    assert.equal(miss.headers.get("allot-edge-cache"), "miss");
    assert.equal(miss.headers.get("ratelimit"), '"client";r=9;t=5');
    await miss.arrayBuffer();
    const hit = await get(edge, "/v1/products", { key: k });
    assert.equal(hit.headers.get("allot-edge-cache"), "hit");
    assert.equal(hit.headers.get("ratelimit"), null, "the origin was not asked: no origin state");
    assert.equal(hit.headers.get("ratelimit-policy"), '"default";q=100;w=60');
    await hit.arrayBuffer();
    origin.respond(originReplies());
  });
});

describe("Authorization and Idempotency-Key: duplicates and the Bearer scheme's case (raw HTTP)", () => {
  let origin, edge;
  const k = makeApiKey("eu");

  before(async () => {
    origin = await startRecordingOrigin(originReplies());
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: origin.url }) } });
  });
  after(async () => {
    await edge?.dispose();
    await origin?.close();
  });

  const post = (headers, body = allocationBody()) =>
    rawRequest(edge.url, {
      method: "POST",
      path: "/v1/allocations",
      headers: [["content-type", "application/json"], ["content-length", String(Buffer.byteLength(body))], ...headers],
      body,
    });

  test("Authorization sent twice is 401, even when both are the same key", async () => {
    origin.reset();
    for (const second of [k.key, makeApiKey("eu").key]) {
      const res = await post([
        ["authorization", `Bearer ${k.key}`],
        ["authorization", `Bearer ${second}`],
        ["idempotency-key", randomHex()],
        ["cf-connecting-ip", "198.51.100.60"],
      ]);
      assert.equal(res.status, 401, res.text());
      const err = res.json().error;
      assert.equal(err.code, "UNAUTHORIZED");
      assert.equal(err.message, "send exactly one Authorization header, with one API key");
    }
    const got = await rawRequest(edge.url, {
      path: "/v1/products",
      headers: [
        ["authorization", `Bearer ${k.key}`],
        ["authorization", `Bearer ${k.key}`],
        ["cf-connecting-ip", "198.51.100.60"],
      ],
    });
    assert.equal(got.status, 401);
    assert.equal(origin.requests.length, 0);
  });

  test("Idempotency-Key sent twice is 400 VALIDATION_FAILED naming the field", async () => {
    origin.reset();
    for (const second of ["order-1", "order-2"]) {
      const res = await post([
        ["authorization", `Bearer ${k.key}`],
        ["idempotency-key", "order-1"],
        ["idempotency-key", second],
      ]);
      assert.equal(res.status, 400, res.text());
      const err = res.json().error;
      assert.equal(err.code, "VALIDATION_FAILED");
      assert.equal(err.message, "Idempotency-Key: must be sent once, as one value without ','");
      assert.equal(err.details.field, "Idempotency-Key");
    }
    assert.equal(origin.requests.length, 0);
  });

  test("the Bearer scheme is case-insensitive; the origin gets the key as 'Bearer <key>', signed for its id", async () => {
    origin.reset();
    for (const scheme of ["BEARER", "bearer", "bEaReR"]) {
      const res = await post([
        ["authorization", `${scheme} ${k.key}`],
        ["idempotency-key", randomHex()],
      ]);
      assert.equal(res.status, 201, res.text());
    }
    const reqs = await origin.waitForRequests(3);
    for (const r of reqs) {
      assert.equal(r.headers.authorization, `Bearer ${k.key}`);
      verifySignature(r.headers, SECRET, "POST", "/v1/allocations", r.body);
    }
  });
});
