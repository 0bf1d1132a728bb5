// End to end: workerd (the real edge build in Miniflare) → the real `allot server` → the stack's
// Postgres and Valkey. Needs the stack and its env (scripts/test provides both):
//   scripts/stack up && eval "$(scripts/stack env)" && cargo build -p allot-origin
// Without DATABASE_URL / VALKEY_URL every test here fails with a message saying so (no skipping).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, startEdgeInFront, DEFAULT_RATELIMITS } from "./lib/edge.mjs";
import { stackEnv, startOrigin } from "./lib/origin-process.mjs";
import http from "node:http";
import { allocationBody, keyIdOf, makeApiKey, randomHex, sign, signedRequest, withBadChecksum } from "./lib/allot.mjs";
import { rawRequest } from "./lib/raw-http.mjs";

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
    // The replay guard and the client limit fail open when Valkey is slow (250 ms by default):
    // give them time, so the tests that count on them do not depend on the machine's load.
    origin = await startOrigin({ cardsPerDenomination: 100, env: { ALLOT_VALKEY_TIMEOUT_MS: "5000" } });
    // A key limit high enough for the 500-request test; the burst test below uses its own edge.
    edge = await startEdgeInFront(origin);
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

  /** A raw POST /v1/allocations to the edge (repeated header lines kept as written). */
  function rawToEdge(headers, body = allocationBody(OTHER)) {
    return rawRequest(edge.url, {
      method: "POST",
      path: "/v1/allocations",
      headers: [["content-type", "application/json"], ["content-length", String(Buffer.byteLength(body))], ...headers],
      body,
    });
  }
  /** The same straight to the origin, signed as the edge signs. */
  function toOrigin(req) {
    return signedRequest(origin.url, { secret: origin.secret, body: allocationBody(OTHER), ...req });
  }
  const errorOf = (res) => {
    const body = res.json();
    assert.deepEqual(Object.keys(body), ["error"], res.text());
    assert.equal(res.headers["content-type"], "application/json");
    return { status: res.status, code: body.error.code, message: body.error.message };
  };
  const written = () =>
    count("SELECT count(*) FROM allocations") +
    count("SELECT count(*) FROM outbox") +
    count("SELECT count(*) FROM inventories WHERE status <> 'active'");

  test("Authorization sent twice: 401 at the edge and 401 from the origin, same code and message", async () => {
    const before = written();
    for (const second of [origin.key, makeApiKey("eu").key]) {
      const auth = [`Bearer ${origin.key}`, `Bearer ${second}`];
      const viaEdge = errorOf(
        await rawToEdge([...auth.map((a) => ["authorization", a]), ["idempotency-key", randomHex()]]),
      );
      const direct = errorOf(await toOrigin({ authorization: auth, idempotencyKey: randomHex() }));
      assert.deepEqual(viaEdge, {
        status: 401,
        code: "UNAUTHORIZED",
        message: "send exactly one Authorization header, with one API key",
      });
      assert.deepEqual(direct, viaEdge);
    }
    assert.equal(written(), before);
  });

  test("Idempotency-Key sent twice: 400 VALIDATION_FAILED from both, same message", async () => {
    const before = written();
    for (const keys of [
      ["order-a", "order-b"],
      ["order-a", "order-a"],
    ]) {
      const viaEdge = errorOf(
        await rawToEdge([["authorization", `Bearer ${origin.key}`], ...keys.map((k) => ["idempotency-key", k])]),
      );
      const direct = errorOf(await toOrigin({ authorization: `Bearer ${origin.key}`, idempotencyKey: keys }));
      assert.deepEqual(viaEdge, {
        status: 400,
        code: "VALIDATION_FAILED",
        message: "Idempotency-Key: must be sent once, as one value without ','",
      });
      assert.deepEqual(direct, viaEdge);
    }
    assert.equal(written(), before);
  });

  test("Authorization: BEARER <key> allocates through the edge and straight at the origin", async () => {
    const viaEdge = await rawToEdge([
      ["authorization", `BEARER ${origin.key}`],
      ["idempotency-key", randomHex()],
    ]);
    assert.equal(viaEdge.status, 201, viaEdge.text());
    assert.equal(viaEdge.json().cards.length, 1);
    const direct = await toOrigin({ authorization: `BEARER ${origin.key}`, idempotencyKey: randomHex() });
    assert.equal(direct.status, 201, direct.text());
    assert.equal(direct.json().cards.length, 1);
  });

  test("signature v2 binds the Idempotency-Key and the key id: signed for one, sent with another, is 401", async () => {
    const before = written();
    const other = origin.issueKey();
    assert.notEqual(keyIdOf(`Bearer ${other}`), keyIdOf(`Bearer ${origin.key}`));
    const cases = [
      // Signed for Idempotency-Key A, sent with B.
      { authorization: `Bearer ${origin.key}`, idempotencyKey: "idem-B", signAs: { idempotencyKey: "idem-A" } },
      // Signed for one key id, sent with another (valid) key of the same client.
      {
        authorization: `Bearer ${other}`,
        idempotencyKey: randomHex(),
        signAs: { keyId: keyIdOf(`Bearer ${origin.key}`) },
      },
      // Signed for another body.
      {
        authorization: `Bearer ${origin.key}`,
        idempotencyKey: randomHex(),
        signAs: { body: Buffer.from(allocationBody({ ...OTHER, quantity: 2 })) },
      },
    ];
    for (const c of cases) {
      const e = errorOf(await toOrigin(c));
      assert.equal(e.status, 401, JSON.stringify(e));
      assert.equal(e.code, "UNAUTHORIZED");
    }
    // The control: the same requests signed for what they send are accepted.
    const ok = await toOrigin({ authorization: `Bearer ${other}`, idempotencyKey: randomHex() });
    assert.equal(ok.status, 201, ok.text());
    assert.equal(written(), before + 3, "only the control wrote (its allocation, its outbox row, its one card)");
  });

  test("the same signed request sent twice: the second is refused as a replay (401)", async () => {
    const idem = randomHex();
    const body = allocationBody(OTHER);
    const signature = sign(origin.secret, Math.floor(Date.now() / 1000), {
      method: "POST",
      pathAndQuery: "/v1/allocations",
      keyId: keyIdOf(`Bearer ${origin.key}`),
      idempotencyKey: idem,
      body: Buffer.from(body),
    });
    const req = { authorization: `Bearer ${origin.key}`, idempotencyKey: idem, body, signature };
    const first = await toOrigin(req);
    assert.equal(first.status, 201, first.text());
    const again = errorOf(await toOrigin(req));
    assert.equal(again.status, 401, JSON.stringify(again));
    assert.equal(again.code, "UNAUTHORIZED");
  });

  test("an edge retry is signed afresh and is not taken for a replay", async () => {
    // A gateway between edge and origin that loses the origin's first answer: the origin did the
    // work, the edge sees 503 and retries once with a new nonce; the origin replays the allocation.
    const seen = [];
    let n = 0;
    const gateway = http.createServer(async (req, res) => {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const headers = { ...req.headers };
      delete headers.host;
      delete headers.connection;
      seen.push(headers["allot-signature"]);
      const answer = await fetch(`${origin.url}${req.url}`, {
        method: req.method,
        headers,
        body: req.method === "POST" ? Buffer.concat(chunks) : undefined,
      });
      const text = await answer.text();
      if (n++ === 0) {
        res.writeHead(503, { "content-type": "text/plain" });
        res.end("lost the origin's answer");
        return;
      }
      res.writeHead(answer.status, {
        "content-type": answer.headers.get("content-type") ?? "application/json",
        ...(answer.headers.get("idempotent-replayed") ? { "idempotent-replayed": "true" } : {}),
      });
      res.end(text);
    });
    await new Promise((r) => gateway.listen(0, "127.0.0.1", r));
    const lossy = await startEdge({
      bindings: {
        ORIGINS: JSON.stringify({ eu: `http://127.0.0.1:${gateway.address().port}` }),
        EDGE_SIGNING_SECRET: origin.secret,
      },
    });
    try {
      const idem = randomHex();
      const res = await allocate(lossy, { idem });
      const text = await res.text();
      assert.equal(res.status, 201, text);
      assert.equal(res.headers.get("idempotent-replayed"), "true", "the retry replayed what the first attempt made");
      assert.equal(seen.length, 2);
      assert.notEqual(seen[0], seen[1], "each attempt has its own signature");
      assert.equal(count(`SELECT count(*) FROM allocations WHERE idempotency_key = '${idem}'`), 1);
    } finally {
      await lossy.dispose();
      gateway.closeAllConnections();
      await new Promise((r) => gateway.close(r));
    }
  });

  test("the origin's per-client limit through the edge: both policies, the origin's state, its 429 passed back", async () => {
    // A client of its own, limited to 3 requests per minute at the origin (the edge allows 100000).
    const client = origin.cli(["client", "create", "--name", `limited-${randomHex()}`]);
    assert.match(client, /^[0-9a-f-]{36}$/);
    origin.cli(["client", "limit", client, "--per-minute", "3"]);
    const key = origin.cli(["key", "issue", "--client", client]);
    const policies = '"default";q=100000;w=60, "client";q=3;w=60';
    for (const remaining of [2, 1, 0]) {
      const res = await allocate(edge, { key, ip: "198.51.100.120" });
      assert.equal(res.status, 201, await res.text());
      assert.equal(res.headers.get("ratelimit-policy"), policies);
      assert.match(res.headers.get("ratelimit"), new RegExp(`^"client";r=${remaining};t=\\d+$`));
    }
    const limited = await allocate(edge, { key, ip: "198.51.100.120" });
    const body = await limited.json();
    assert.equal(limited.status, 429, JSON.stringify(body));
    assert.equal(body.error.code, "RATE_LIMITED");
    assert.deepEqual(Object.keys(body), ["error"]);
    assert.equal(limited.headers.get("ratelimit-policy"), policies);
    const retryAfter = Number(limited.headers.get("retry-after"));
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`);
    assert.match(limited.headers.get("ratelimit"), /^"client";r=0;t=\d+$/);
    // Another client is not limited by this one's quota.
    const other = await allocate(edge);
    assert.equal(other.status, 201);
    assert.match(other.headers.get("ratelimit-policy"), /^"default";q=100000;w=60, "client";q=\d+;w=60$/);
    await other.arrayBuffer();
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
