// The callers' contract through the edge (the real build in workerd): GET /v1/allocations forwarded
// with its query, signed, rate limited and never cached; Location passed back on a 201 and its
// replay; GET /v1/openapi.json without a key, from the edge cache (one origin fetch per TTL);
// the caller's funding, GET /v1/balance and GET /v1/ledger, forwarded the same way.
// First against recording origins (what exactly reaches the origin), then against a real origin.
// Needs edge/build (scripts/edge-build) and, for the second part, the stack's env.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, startEdgeInFront, DEFAULT_BINDINGS } from "./lib/edge.mjs";
import { startRecordingOrigin } from "./lib/recording-origin.mjs";
import { startOrigin } from "./lib/origin-process.mjs";
import { allocationBody, makeApiKey, randomHex, verifySignature } from "./lib/allot.mjs";

const SECRET = DEFAULT_BINDINGS.EDGE_SIGNING_SECRET;
const ID = "0192f0c1-7c7e-7000-8000-000000000001";
const DOCUMENT = { openapi: "3.1.0", info: { title: "allot", version: "test" }, paths: {} };

function get(edge, path, { key, headers = {} } = {}) {
  const h = { ...headers };
  if (key !== undefined) h.authorization = `Bearer ${key}`;
  return edge.fetch(path, { headers: h });
}

describe("edge: the listing and the document, against a recording origin", () => {
  let origin, edge;
  const { key } = makeApiKey("eu");
  const count = (path) => origin.requests.filter((r) => r.url.split("?")[0] === path).length;

  before(async () => {
    origin = await startRecordingOrigin((req) => {
      const path = req.url.split("?")[0];
      if (path === "/v1/openapi.json") {
        return {
          status: 200,
          headers: { "content-type": "application/json", etag: '"doc-1"', "cache-control": "max-age=300" },
          body: DOCUMENT,
        };
      }
      if (path === "/v1/allocations" && req.method === "GET") {
        return {
          status: 200,
          headers: { "content-type": "application/json", ratelimit: '"client";r=9;t=30' },
          body: { items: [], next_cursor: null, query: req.url.split("?")[1] ?? null },
        };
      }
      if ((path === "/v1/balance" || path === "/v1/ledger") && req.method === "GET") {
        return {
          status: 200,
          headers: { "content-type": "application/json", ratelimit: '"client";r=8;t=30' },
          body: { path, query: req.url.split("?")[1] ?? null },
        };
      }
      if (path === "/v1/allocations" && req.method === "POST") {
        return {
          status: 201,
          headers: { "content-type": "application/json", location: `/v1/allocations/${ID}` },
          body: { allocation_id: ID },
        };
      }
      return { status: 404, body: { error: { code: "NOT_FOUND", message: "origin 404" } } };
    });
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: origin.url }) } });
  });
  after(async () => {
    await edge?.dispose();
    await origin?.close();
  });

  test("GET /v1/allocations is forwarded with its query as received, signed, and never cached", async () => {
    origin.reset();
    const query = "limit=2&product_id=gift-usd&created_after=2026-11-27T10%3A00%3A00%2B01%3A00&cursor=bDE6eA";
    for (let i = 1; i <= 2; i++) {
      const res = await get(edge, `/v1/allocations?${query}`, { key });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.query, query, "the query reaches the origin as sent");
      assert.equal(res.headers.get("cache-control"), "no-store", "codes: no shared cache may keep it");
      assert.equal(res.headers.get("allot-edge-cache"), null);
      assert.equal(res.headers.get("ratelimit"), '"client";r=9;t=30');
      assert.equal(res.headers.get("ratelimit-policy"), '"default";q=100;w=60');
      assert.equal(count("/v1/allocations"), i, "every listing reaches the origin");
    }
    const [req] = origin.requests;
    assert.equal(req.method, "GET");
    assert.equal(req.url, `/v1/allocations?${query}`);
    assert.equal(req.headers.authorization, `Bearer ${key}`);
    verifySignature(req.headers, SECRET, "GET", `/v1/allocations?${query}`, Buffer.alloc(0));
  });

  test("GET /v1/allocations needs a valid key format before anything is forwarded", async () => {
    origin.reset();
    for (const headers of [{}, { authorization: "Bearer nope" }]) {
      const res = await edge.fetch("/v1/allocations", { headers });
      const body = await res.json();
      assert.equal(res.status, 401, JSON.stringify(body));
      assert.equal(body.error.code, "UNAUTHORIZED");
    }
    assert.equal(count("/v1/allocations"), 0);
  });

  test("GET /v1/balance and GET /v1/ledger are forwarded signed, the ledger's query as received, never cached", async () => {
    origin.reset();
    const query = "limit=5&currency=EUR&kind=allocation&created_after=2026-11-27T10%3A00%3A00%2B01%3A00&cursor=ZzE6eA";
    for (const pathAndQuery of ["/v1/balance", `/v1/ledger?${query}`]) {
      const path = pathAndQuery.split("?")[0];
      for (let i = 1; i <= 2; i++) {
        const res = await get(edge, pathAndQuery, { key });
        const body = await res.json();
        assert.equal(res.status, 200, JSON.stringify(body));
        assert.equal(body.path, path);
        assert.equal(body.query, pathAndQuery.split("?")[1] ?? null, "the query reaches the origin as sent");
        assert.equal(res.headers.get("cache-control"), "no-store", "money: no shared cache may keep it");
        assert.equal(res.headers.get("allot-edge-cache"), null);
        assert.equal(res.headers.get("ratelimit"), '"client";r=8;t=30');
        assert.equal(res.headers.get("ratelimit-policy"), '"default";q=100;w=60');
        assert.equal(count(path), i, "every read reaches the origin");
      }
      const req = origin.requests.find((r) => r.url === pathAndQuery);
      assert.equal(req.method, "GET");
      assert.equal(req.headers.authorization, `Bearer ${key}`);
      verifySignature(req.headers, SECRET, "GET", pathAndQuery, Buffer.alloc(0));
    }
    // No key, or a method the route does not serve: refused at the edge, never forwarded.
    for (const [method, path, status] of [
      ["GET", "/v1/balance", 401],
      ["GET", "/v1/ledger", 401],
      ["POST", "/v1/balance", 404],
      ["GET", "/v1/ledger/1", 404],
    ]) {
      const headers = status === 404 ? { authorization: `Bearer ${key}` } : {};
      const res = await edge.fetch(path, { method, headers });
      const body = await res.json();
      assert.equal(res.status, status, `${method} ${path}: ${JSON.stringify(body)}`);
    }
    assert.equal(count("/v1/balance") + count("/v1/ledger"), 4, "nothing more was forwarded");
  });

  test("Location on a 201 is passed back", async () => {
    const res = await edge.fetch("/v1/allocations", {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "idempotency-key": randomHex(), "content-type": "application/json" },
      body: allocationBody(),
    });
    await res.arrayBuffer();
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("location"), `/v1/allocations/${ID}`);
  });

  test("GET /v1/openapi.json needs no key, is fetched once per TTL, and answers If-None-Match", async () => {
    origin.reset();
    const first = await edge.fetch("/v1/openapi.json");
    assert.equal(first.status, 200);
    assert.equal(first.headers.get("allot-edge-cache"), "miss");
    assert.deepEqual(await first.json(), DOCUMENT);
    for (let i = 0; i < 5; i++) {
      const again = await edge.fetch("/v1/openapi.json", { headers: { authorization: "Bearer junk" } });
      assert.equal(again.status, 200);
      assert.equal(again.headers.get("allot-edge-cache"), "hit");
      assert.equal(again.headers.get("content-type"), "application/json");
      assert.equal(again.headers.get("cache-control"), "max-age=300");
      assert.ok(again.headers.get("x-request-id"));
      assert.deepEqual(await again.json(), DOCUMENT);
    }
    const conditional = await edge.fetch("/v1/openapi.json", { headers: { "if-none-match": '"doc-1"' } });
    assert.equal(conditional.status, 304);
    assert.equal(conditional.headers.get("etag"), '"doc-1"');
    await conditional.arrayBuffer();
    assert.equal(count("/v1/openapi.json"), 1, "one origin fetch for all of them");
    const [req] = origin.requests;
    assert.equal(req.headers.authorization, undefined, "no caller key is passed on");
    verifySignature(req.headers, SECRET, "GET", "/v1/openapi.json", Buffer.alloc(0));
  });

  test("the document with its origin down is 503 with Retry-After, and is not cached", async () => {
    const dead = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: "http://127.0.0.1:9" }) } });
    try {
      for (let i = 0; i < 2; i++) {
        const res = await dead.fetch("/v1/openapi.json");
        const body = await res.json();
        assert.equal(res.status, 503, JSON.stringify(body));
        assert.equal(body.error.code, "ORIGIN_UNAVAILABLE");
        assert.equal(res.headers.get("retry-after"), "2");
        assert.equal(res.headers.get("allot-edge-cache"), "miss");
      }
    } finally {
      await dead.dispose();
    }
  });
});

describe("end to end: the listing, Location and the document through the edge", () => {
  let origin, edge;
  const OTHER = { product_id: "gift-usd", denomination: "25.00" };

  before(async () => {
    origin = await startOrigin({ cardsPerDenomination: 20 });
    edge = await startEdgeInFront(origin);
  });
  after(async () => {
    await edge?.dispose();
    await origin?.stop();
  });

  function allocate(idem, body) {
    const headers = {
      authorization: `Bearer ${origin.key}`,
      "idempotency-key": idem,
      "content-type": "application/json",
    };
    return edge.fetch("/v1/allocations", { method: "POST", headers, body });
  }

  test("a 201 and its replay carry Location; it reads the allocation back; the listing pages through", async () => {
    const made = [];
    for (let i = 0; i < 3; i++) {
      const idem = `callers-${randomHex()}`;
      const body = allocationBody({ ...OTHER, quantity: 1, client_reference: `callers-${i}` });
      const res = await allocate(idem, body);
      const alloc = await res.json();
      assert.equal(res.status, 201, JSON.stringify(alloc));
      assert.equal(res.headers.get("location"), `/v1/allocations/${alloc.allocation_id}`);
      const replay = await allocate(idem, body);
      await replay.arrayBuffer();
      assert.equal(replay.headers.get("idempotent-replayed"), "true");
      assert.equal(replay.headers.get("location"), res.headers.get("location"));
      const read = await get(edge, res.headers.get("location"), { key: origin.key });
      assert.deepEqual(await read.json(), alloc);
      made.push(alloc);
    }
    const seen = [];
    let query = "?limit=2&product_id=gift-usd";
    for (let page = 0; page < 10 && query; page++) {
      const res = await get(edge, `/v1/allocations${query}`, { key: origin.key });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(res.headers.get("cache-control"), "no-store");
      assert.ok(body.items.length <= 2);
      seen.push(...body.items);
      query = body.next_cursor ? `?limit=2&product_id=gift-usd&cursor=${body.next_cursor}` : null;
    }
    assert.deepEqual(seen, [...made].reverse(), "newest first, each as GET shows it");

    const refused = await get(edge, "/v1/allocations?colour=blue", { key: origin.key });
    const err = await refused.json();
    assert.equal(refused.status, 400, JSON.stringify(err));
    assert.equal(err.error.code, "VALIDATION_FAILED");
    assert.equal(err.error.details.field, "query");
  });

  test("the demo client's balance and ledger through the edge", async () => {
    const client = origin.clientId;
    origin.sql(`
      INSERT INTO funding_accounts (client_id, currency, credit_limit_minor, low_balance_minor)
           VALUES ('${client}', 'EUR', 5000, 2000);
      INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, memo)
           VALUES ('${client}', 'EUR', 'deposit', 'deposits', 'client', 20000, 'top-up');
      INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, memo)
           VALUES ('${client}', 'EUR', 'adjustment', 'client', 'adjustments', 8000, 'correction');
      UPDATE funding_accounts SET balance_minor = 12000 WHERE client_id = '${client}' AND currency = 'EUR';`);
    const res = await get(edge, "/v1/balance", { key: origin.key });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(res.headers.get("cache-control"), "no-store");
    assert.equal(body.balances.length, 1);
    const { updated_at, ...eur } = body.balances[0];
    assert.deepEqual(eur, {
      currency: "EUR",
      balance: "120.00",
      credit_limit: "50.00",
      available: "170.00",
      low_balance_threshold: "20.00",
    });
    assert.ok(!Number.isNaN(Date.parse(updated_at)), updated_at);

    const seen = [];
    let query = "?limit=1&currency=EUR";
    for (let page = 0; page < 10 && query; page++) {
      const res = await get(edge, `/v1/ledger${query}`, { key: origin.key });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(res.headers.get("cache-control"), "no-store");
      seen.push(...body.items);
      query = body.next_cursor ? `?limit=1&currency=EUR&cursor=${body.next_cursor}` : null;
    }
    // Entries the allocations of this run may have added come first; the two written here last.
    const mine = seen.filter((e) => e.kind === "deposit" || e.kind === "adjustment");
    assert.deepEqual(
      mine.map((e) => [e.kind, e.amount, e.memo]),
      [
        ["adjustment", "-80.00", "correction"],
        ["deposit", "200.00", "top-up"],
      ],
    );
    assert.ok(seen.every((e, i) => i === 0 || seen[i - 1].id > e.id), "newest first");

    const refused = await get(edge, "/v1/ledger?kind=debit", { key: origin.key });
    const err = await refused.json();
    assert.equal(refused.status, 400, JSON.stringify(err));
    assert.equal(err.error.code, "VALIDATION_FAILED");
    assert.equal(err.error.details.field, "kind");
  });

  test("the edge serves the origin's callers' document, and only it", async () => {
    const viaEdge = await edge.fetch("/v1/openapi.json");
    const doc = await viaEdge.json();
    assert.equal(viaEdge.status, 200);
    const direct = await fetch(`${origin.url}/v1/openapi.json`);
    assert.deepEqual(doc, await direct.json());
    assert.equal(viaEdge.headers.get("etag"), direct.headers.get("etag"));
    assert.equal(doc.openapi, "3.1.0");
    assert.ok(doc.paths["/v1/allocations"].get, "the listing is described");
    assert.ok(doc.paths["/v1/balance"].get && doc.paths["/v1/ledger"].get, "the funding reads are described");
    assert.ok(!Object.keys(doc.paths).some((p) => p.startsWith("/ops/")), "no operator API");
    const hit = await edge.fetch("/v1/openapi.json");
    await hit.arrayBuffer();
    assert.equal(hit.headers.get("allot-edge-cache"), "hit");
  });
});
