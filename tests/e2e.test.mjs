// End to end: workerd (the real edge build in Miniflare) → the real `allot server` → the stack's
// Postgres and Valkey. Needs the stack and its env (scripts/test provides both):
//   scripts/stack up && eval "$(scripts/stack env)" && cargo build -p allot-origin
// Without DATABASE_URL / VALKEY_URL every test here fails with a message saying so (no skipping).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, DEFAULT_RATELIMITS } from "./lib/edge.mjs";
import { stackEnv, startOrigin } from "./lib/origin-process.mjs";
import { allocationBody, keyIdOf, makeApiKey, randomHex, sign, withBadChecksum } from "./lib/allot.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** The one denomination the concurrency test drains: seeded with exactly 100 cards. */
const DRAINED = { product_id: "gift-usd", denomination: "100.00" };
/** Everything else allocates from here, so the drained pool stays at 100 until its test. */
const OTHER = { product_id: "gift-usd", denomination: "25.00" };

test("the stack's env is set (DATABASE_URL, VALKEY_URL)", () => {
  stackEnv(); // throws the how-to message when they are missing
});

describe("end to end: edge → allot server → Postgres + Valkey", () => {
  let origin, edge;

  before(async () => {
    origin = await startOrigin({ cardsPerDenomination: 100 });
    edge = await startEdge({
      bindings: {
        ORIGINS: JSON.stringify({ eu: origin.url }),
        EDGE_SIGNING_SECRET: origin.secret,
        RL_KEY_LIMIT: "100000",
      },
      // High enough for the 500-request test; the burst test below uses its own edge.
      ratelimits: { ...DEFAULT_RATELIMITS, RL_KEY_DEFAULT: { simple: { limit: 100000, period: 60 } } },
    });
  });
  after(async () => {
    await edge?.dispose();
    await origin?.stop();
  });

  function allocate(e, { key = origin.key, idem = randomHex(), body = allocationBody(OTHER), ip } = {}) {
    const headers = { authorization: `Bearer ${key}`, "idempotency-key": idem, "content-type": "application/json" };
    if (ip) headers["cf-connecting-ip"] = ip;
    return e.fetch("/v1/allocations", { method: "POST", headers, body });
  }
  const count = (sql) => Number(origin.sql(sql));

  test("/readyz through the edge reports the origin's Postgres", async () => {
    const res = await edge.fetch("/readyz");
    assert.equal(res.status, 200);
    const doc = await res.json();
    assert.equal(doc.status, "pass");
    assert.equal(doc.checks["postgres:primary"][0].status, "pass");
    assert.equal(doc.checks["origin:eu"][0].status, "pass");
  });

  test("an allocation through the edge, its replay, and reading it back", async () => {
    const idem = `e2e-${randomHex()}`;
    const body = allocationBody({ ...OTHER, quantity: 2, client_reference: "e2e order ✓" });
    const res = await allocate(edge, { idem, body });
    const text = await res.text();
    assert.equal(res.status, 201, text);
    assert.equal(res.headers.get("idempotent-replayed"), null);
    const rid = res.headers.get("x-request-id");
    assert.ok(rid);
    const alloc = JSON.parse(text);
    assert.equal(alloc.quantity, 2);
    assert.equal(alloc.cards.length, 2);
    assert.equal(new Set(alloc.cards.map((c) => c.card_id)).size, 2);
    assert.match(alloc.cards[0].code, /^DEMO-/);
    // The origin adopted the edge's request id.
    assert.ok(
      origin.logs.some((l) => l.includes(rid)),
      "origin logged the edge's request id",
    );

    const replay = await allocate(edge, { idem, body });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get("idempotent-replayed"), "true");
    assert.equal(await replay.text(), text, "identical body");

    const mismatch = await allocate(edge, { idem, body: allocationBody({ ...OTHER, quantity: 3 }) });
    assert.equal(mismatch.status, 422);
    assert.equal((await mismatch.json()).error.code, "IDEMPOTENCY_MISMATCH");

    const got = await edge.fetch(`/v1/allocations/${alloc.allocation_id}`, {
      headers: { authorization: `Bearer ${origin.key}` },
    });
    assert.equal(got.status, 200);
    assert.deepEqual((await got.json()).cards, alloc.cards);
  });

  test("the catalogue through the edge, cached at the edge", async () => {
    const h = { authorization: `Bearer ${origin.key}` };
    const a = await edge.fetch("/v1/products", { headers: h });
    assert.equal(a.status, 200);
    assert.ok(a.headers.get("etag"));
    const catalogue = await a.text();
    assert.match(catalogue, /gift-usd/);
    const b = await edge.fetch("/v1/products", { headers: h });
    assert.equal(b.headers.get("allot-edge-cache"), "hit");
    assert.equal(await b.text(), catalogue);
  });

  test("the edge's validation errors are the origin's, byte for byte apart from the request id", async () => {
    const bodies = [
      allocationBody({ ...OTHER, quantity: 0 }),
      allocationBody({ ...OTHER, denomination: "25.001" }),
      allocationBody({ ...OTHER, extra: 1 }),
      "{oops",
      "[]",
    ];
    for (const body of bodies) {
      const viaEdge = await allocate(edge, { body });
      const edgeErr = (await viaEdge.json()).error;
      // The same request straight to the origin, signed the way the edge signs.
      const ts = Math.floor(Date.now() / 1000);
      const idempotencyKey = randomHex();
      const signed = { method: "POST", pathAndQuery: "/v1/allocations", keyId: keyIdOf(`Bearer ${origin.key}`) };
      const direct = await fetch(`${origin.url}/v1/allocations`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${origin.key}`,
          "idempotency-key": idempotencyKey,
          "allot-signature": sign(origin.secret, ts, { ...signed, idempotencyKey, body: Buffer.from(body) }),
        },
        body,
      });
      const originErr = (await direct.json()).error;
      assert.equal(viaEdge.status, direct.status, body);
      delete edgeErr.request_id;
      delete originErr.request_id;
      assert.deepEqual(edgeErr, originErr, body);
    }
  });

  test("a bad key is 401 at the edge: the origin never hears of it and the database is untouched", async () => {
    const before = count("SELECT count(*) FROM allocations") + count("SELECT count(*) FROM outbox");
    const linesBefore = origin.logs.length;
    for (const key of [withBadChecksum(origin.key), "allot_eu_nope"]) {
      const res = await allocate(edge, { key });
      assert.equal(res.status, 401);
      const err = (await res.json()).error;
      assert.equal(err.code, "UNAUTHORIZED");
      assert.ok(!origin.logs.some((l) => l.includes(err.request_id)), "no origin log line for it");
    }
    // A well-formed key the origin does not know: the origin refuses it, nothing is written.
    const unknown = await allocate(edge, { key: makeApiKey("eu").key });
    assert.equal(unknown.status, 401);
    assert.equal((await unknown.json()).error.code, "UNAUTHORIZED");
    await sleep(100);
    const after = count("SELECT count(*) FROM allocations") + count("SELECT count(*) FROM outbox");
    assert.equal(after, before);
    // Only the unknown key's request reached the origin (one access-log line, maybe with its span).
    assert.ok(origin.logs.length - linesBefore <= 3, origin.logs.slice(linesBefore).join("\n"));
  });

  test("unsigned requests straight to the origin are refused", async () => {
    const res = await fetch(`${origin.url}/v1/products`, { headers: { authorization: `Bearer ${origin.key}` } });
    assert.equal(res.status, 401);
    await res.arrayBuffer();
  });

  test("a rate-limited burst: the edge forwards exactly the quota and answers 429 for the rest", async () => {
    const limited = await startEdge({
      bindings: {
        ORIGINS: JSON.stringify({ eu: origin.url }),
        EDGE_SIGNING_SECRET: origin.secret,
        RL_KEY_LIMIT: "5",
        RL_KEY_PERIOD: "10",
      },
      ratelimits: { ...DEFAULT_RATELIMITS, RL_KEY_DEFAULT: { simple: { limit: 5, period: 10 } } },
    });
    try {
      // Start inside a fresh 10 s window (Miniflare's windows are aligned to the epoch).
      const left = 10 - ((Date.now() / 1000) % 10);
      if (left < 4) await sleep(left * 1000 + 100);
      const marker = `burst-${randomHex()}`;
      const results = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          allocate(limited, { body: allocationBody({ ...OTHER, client_reference: `${marker}-${i}` }) }).then(
            async (r) => ({ status: r.status, headers: r.headers, body: await r.json() }),
          ),
        ),
      );
      const ok = results.filter((r) => r.status === 201);
      const limitedOut = results.filter((r) => r.status === 429);
      assert.equal(ok.length, 5, JSON.stringify(results.map((r) => r.status)));
      assert.equal(limitedOut.length, 7);
      for (const r of limitedOut) {
        assert.equal(r.body.error.code, "RATE_LIMITED");
        assert.ok(Number(r.headers.get("retry-after")) >= 1);
        assert.equal(r.headers.get("ratelimit-policy"), '"default";q=5;w=10');
      }
      assert.equal(count(`SELECT count(*) FROM allocations WHERE client_reference LIKE '${marker}-%'`), 5);
    } finally {
      await limited.dispose();
    }
  });

  test(
    "500 concurrent allocations through the edge for 100 cards: exactly 100 distinct cards",
    { timeout: 60_000 },
    async (t) => {
      const stocked = `SELECT count(*) FROM inventories WHERE product_id = 'gift-usd' AND denomination_minor = 10000`;
      assert.equal(count(`${stocked} AND status = 'active'`), 100, "seeded with exactly 100 cards");
      const t0 = performance.now();
      const results = await Promise.all(
        Array.from({ length: 500 }, () =>
          allocate(edge, { body: allocationBody({ ...DRAINED, quantity: 1 }) }).then(async (r) => ({
            status: r.status,
            body: await r.json(),
          })),
        ),
      );
      const ms = performance.now() - t0;
      const statuses = {};
      for (const r of results) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      const ok = results.filter((r) => r.status === 201);
      assert.equal(ok.length, 100, JSON.stringify(statuses));
      const ids = new Set(ok.flatMap((r) => r.body.cards.map((c) => c.card_id)));
      const codes = new Set(ok.flatMap((r) => r.body.cards.map((c) => c.code)));
      assert.equal(ids.size, 100, "100 distinct card ids");
      assert.equal(codes.size, 100, "100 distinct codes");
      const rest = results.filter((r) => r.status !== 201);
      assert.equal(rest.length, 400);
      for (const r of rest) {
        assert.equal(r.status, 409, JSON.stringify(r.body));
        assert.equal(r.body.error.code, "OUT_OF_STOCK");
      }
      assert.equal(count(`${stocked} AND status = 'active'`), 0);
      t.diagnostic(`500 concurrent allocations through the edge in ${ms.toFixed(0)} ms: ${JSON.stringify(statuses)}`);
    },
  );
});
