// Two regions behind one edge: an eu and a us origin, each on its own database with its own demo
// catalogue, and one edge (workerd) whose ORIGINS names both. Keys route by their region; each
// region's catalogue and cards are its own; an origin refuses another region's key (401, even when
// the request is signed as the edge signs it); a region with no origin is refused at the edge (403).
//
// Needs the stack and its env, the allot binary and the edge build (scripts/test provides them).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, DEFAULT_RATELIMITS } from "./lib/edge.mjs";
import { stackEnv, startOrigin } from "./lib/origin-process.mjs";
import { allocationBody, makeApiKey, randomHex, signedRequest } from "./lib/allot.mjs";

test("the stack's env is set (DATABASE_URL, VALKEY_URL)", () => {
  stackEnv();
});

describe("two regions, two databases, one edge", () => {
  let eu, us, edge;

  before(async () => {
    const secret = randomHex(24);
    // One after the other: two seeds at once would only slow each other down.
    eu = await startOrigin({ region: "eu", secret, cardsPerDenomination: 20 });
    us = await startOrigin({ region: "us", secret, catalogue: "us", cardsPerDenomination: 20 });
    edge = await startEdge({
      bindings: {
        ORIGINS: JSON.stringify({ eu: eu.url, us: us.url }),
        DEFAULT_REGION: "eu",
        EDGE_SIGNING_SECRET: secret,
        RL_KEY_LIMIT: "100000",
      },
      ratelimits: { ...DEFAULT_RATELIMITS, RL_KEY_DEFAULT: { simple: { limit: 100000, period: 60 } } },
    });
  });
  after(async () => {
    await edge?.dispose();
    await us?.stop();
    await eu?.stop();
  });

  const products = async (key) => {
    const res = await edge.fetch("/v1/products", { headers: { authorization: `Bearer ${key}` } });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    return JSON.parse(text);
  };
  const allocate = (key, body) =>
    edge.fetch("/v1/allocations", {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "idempotency-key": randomHex(), "content-type": "application/json" },
      body,
    });
  const ids = (catalogue) => JSON.stringify(catalogue).match(/"(gift-usd|games-eur|mobile-jpy|store-usd|games-usd)"/g);

  test("each demo key is of its origin's region", () => {
    assert.match(eu.key, /^allot_eu_/);
    assert.match(us.key, /^allot_us_/);
  });

  test("an eu key gets eu's catalogue, a us key us's", async () => {
    const euIds = new Set(ids(await products(eu.key)));
    const usIds = new Set(ids(await products(us.key)));
    assert.deepEqual([...euIds].sort(), ['"games-eur"', '"gift-usd"', '"mobile-jpy"']);
    assert.deepEqual([...usIds].sort(), ['"games-usd"', '"store-usd"']);
    const usCatalogue = JSON.stringify(await products(us.key));
    assert.doesNotMatch(usCatalogue, /"(EUR|JPY)"/, "dollars only in us");
  });

  test("an eu key allocates eu cards, a us key us cards, each in its own database", async () => {
    const e = await allocate(eu.key, allocationBody({ product_id: "gift-usd", denomination: "25.00" }));
    assert.equal(e.status, 201, await e.clone().text());
    const euAlloc = await e.json();
    const u = await allocate(us.key, allocationBody({ product_id: "store-usd", denomination: "15.00", quantity: 2 }));
    assert.equal(u.status, 201, await u.clone().text());
    const usAlloc = await u.json();
    assert.equal(usAlloc.cards.length, 2);
    assert.equal(eu.sql(`SELECT count(*) FROM allocations WHERE id = '${euAlloc.allocation_id}'`), "1");
    assert.equal(us.sql(`SELECT count(*) FROM allocations WHERE id = '${euAlloc.allocation_id}'`), "0");
    assert.equal(us.sql(`SELECT count(*) FROM allocations WHERE id = '${usAlloc.allocation_id}'`), "1");
    assert.equal(eu.sql(`SELECT count(*) FROM allocations WHERE id = '${usAlloc.allocation_id}'`), "0");
    // Reading it back goes to the key's region too.
    const back = await edge.fetch(`/v1/allocations/${usAlloc.allocation_id}`, {
      headers: { authorization: `Bearer ${us.key}` },
    });
    assert.equal(back.status, 200);
    assert.deepEqual((await back.json()).cards, usAlloc.cards);
  });

  test("the catalogue is per region: a us key cannot allocate an eu product", async () => {
    const res = await allocate(us.key, allocationBody({ product_id: "gift-usd", denomination: "25.00" }));
    const body = await res.json();
    assert.ok(res.status >= 400 && res.status < 500, JSON.stringify(body));
    assert.notEqual(res.status, 401);
    assert.equal(us.sql("SELECT count(*) FROM allocations WHERE product_id = 'gift-usd'"), "0");
    assert.equal(typeof body.error.code, "string");
  });

  test("a us key sent straight to the eu origin, signed as the edge signs, is refused: 401", async () => {
    const before = eu.sql("SELECT count(*) FROM allocations");
    for (const [method, path, body] of [
      ["POST", "/v1/allocations", allocationBody({ product_id: "gift-usd", denomination: "25.00" })],
      ["GET", "/v1/products", undefined],
    ]) {
      const res = await signedRequest(eu.url, {
        method,
        path,
        secret: eu.secret,
        authorization: `Bearer ${us.key}`,
        idempotencyKey: method === "POST" ? randomHex() : null,
        body,
        headers: method === "POST" ? [["content-type", "application/json"]] : [],
      });
      assert.equal(res.status, 401, `${method} ${path}: ${res.text()}`);
      const err = res.json();
      assert.deepEqual(Object.keys(err), ["error"]);
      assert.equal(err.error.code, "UNAUTHORIZED");
      assert.match(err.error.message, /belongs to region us, not eu/);
      assert.equal(typeof err.error.request_id, "string");
    }
    assert.equal(eu.sql("SELECT count(*) FROM allocations"), before, "nothing written");
  });

  test("a key of a region with no origin is refused at the edge: 403", async () => {
    const ap = makeApiKey("ap").key;
    const res = await allocate(ap, allocationBody({ product_id: "gift-usd", denomination: "25.00" }));
    const body = await res.json();
    assert.equal(res.status, 403, JSON.stringify(body));
    assert.equal(body.error.code, "FORBIDDEN");
    assert.match(body.error.message, /no origin serves region ap/);
    const list = await edge.fetch("/v1/products", { headers: { authorization: `Bearer ${ap}` } });
    assert.equal(list.status, 403);
    await list.arrayBuffer();
  });

  test("/readyz speaks for each region", async () => {
    for (const region of ["eu", "us"]) {
      const res = await edge.fetch(`/readyz?region=${region}`);
      const doc = await res.json();
      assert.equal(res.status, 200, JSON.stringify(doc));
      assert.equal(doc.checks[`origin:${region}`][0].status, "pass");
    }
    const ap = await edge.fetch("/readyz?region=ap");
    assert.equal(ap.status, 404);
    await ap.arrayBuffer();
  });
});
