// Several origin instances per region (ORIGINS lists): the edge in workerd against recording
// origins on 127.0.0.1. Requests spread over a region's instances, fail over on a connect error or
// a 502/503/504 to each instance at most once, never on a timeout or any other answer; /readyz is
// ready while one instance is; bad lists are refused. Builds nothing: run scripts/edge-build first.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge, DEFAULT_BINDINGS } from "./lib/edge.mjs";
import { startRecordingOrigin } from "./lib/recording-origin.mjs";
import { allocationBody, freePort, makeApiKey, randomHex, verifySignature } from "./lib/allot.mjs";

const SECRET = DEFAULT_BINDINGS.EDGE_SIGNING_SECRET;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const key = makeApiKey("eu").key;

/** An origin answering like the real one for the routes used here, `name` in every body. */
function replies(name) {
  return (req) => {
    const path = req.url.split("?")[0];
    if (path === "/readyz") {
      return {
        status: 200,
        headers: { "content-type": "application/health+json" },
        body: { status: "pass", checks: { "postgres:primary": [{ status: "pass" }] } },
      };
    }
    if (path === "/v1/allocations" && req.method === "POST") {
      return { status: 201, body: { allocation_id: `from-${name}`, idem: req.headers["idempotency-key"] } };
    }
    return { status: 200, body: { served_by: name } };
  };
}

function post(edge, idem = randomHex()) {
  return edge.fetch("/v1/allocations", {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "idempotency-key": idem, "content-type": "application/json" },
    body: allocationBody(),
  });
}

async function errorOf(res, status, code) {
  const body = await res.json();
  assert.equal(res.status, status, JSON.stringify(body));
  assert.equal(body.error.code, code, JSON.stringify(body));
  return body.error;
}

/** The edge's access-log lines for requests, once `n` of them are in. */
async function requestLines(edge, n) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const lines = edge.logs.filter((l) => l.msg === "request");
    if (lines.length >= n || Date.now() > deadline) return lines;
    await sleep(20);
  }
}

describe("a region with two instances", () => {
  let a, b, edge;

  before(async () => {
    a = await startRecordingOrigin(replies("a"));
    b = await startRecordingOrigin(replies("b"));
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: [a.url, b.url] }), ORIGIN_TIMEOUT_MS: "400" } });
  });
  after(async () => {
    await edge?.dispose();
    await a?.close();
    await b?.close();
  });
  function reset() {
    a.reset();
    b.reset();
    a.respond(replies("a"));
    b.respond(replies("b"));
    edge.logs.length = 0;
  }

  test("requests alternate between the instances, one attempt each, and the log names the instance", async () => {
    reset();
    const served = [];
    for (let i = 0; i < 20; i++) {
      const res = await post(edge);
      assert.equal(res.status, 201);
      served.push((await res.json()).allocation_id);
    }
    assert.equal(a.requests.length, 10);
    assert.equal(b.requests.length, 10);
    for (let i = 1; i < served.length; i++) assert.notEqual(served[i], served[i - 1], `round robin: ${served}`);
    const lines = await requestLines(edge, 20);
    assert.equal(lines.length, 20);
    for (const [i, line] of lines.entries()) {
      assert.equal(line.origin_attempts, 1);
      assert.equal(line.origin_instance, served[i] === "from-a" ? "eu/1" : "eu/2");
    }
    assert.ok(!JSON.stringify(lines).includes(a.url), "the log names the instance by its place, not its URL");
  });

  test("a 503 or 502 fails over to the other instance with the same request, signed afresh", async () => {
    for (const status of [503, 502, 504]) {
      reset();
      // Whichever instance this request starts at fails; the other one then answers.
      let first;
      const failOnce = (name) => (req) => {
        if (!first) {
          first = name;
          return { status, body: "instance trouble" };
        }
        return replies(name)(req);
      };
      a.respond(failOnce("a"));
      b.respond(failOnce("b"));
      const res = await post(edge, `failover-${status}`);
      assert.equal(res.status, 201, `after a ${status}`);
      const body = await res.json();
      assert.notEqual(body.allocation_id, `from-${first}`, "the other instance answered");
      const reqs = [...a.requests, ...b.requests];
      assert.equal(reqs.length, 2, "one attempt per instance");
      const sigs = reqs.map((r) => {
        assert.equal(r.headers["idempotency-key"], `failover-${status}`);
        return verifySignature(r.headers, SECRET, "POST", "/v1/allocations", r.body);
      });
      assert.notEqual(sigs[0].nonce, sigs[1].nonce);
      assert.ok(reqs[0].body.equals(reqs[1].body));
      const [line] = await requestLines(edge, 1);
      assert.equal(line.origin_attempts, 2);
      assert.equal(line.origin_instance, first === "a" ? "eu/2" : "eu/1");
    }
  });

  test("every instance failing: 503 ORIGIN_UNAVAILABLE after exactly one attempt each", async () => {
    reset();
    a.respond({ status: 503, body: "down" });
    b.respond({ status: 502, body: "down" });
    const res = await post(edge);
    await errorOf(res, 503, "ORIGIN_UNAVAILABLE");
    assert.equal(res.headers.get("retry-after"), "2");
    assert.equal(a.requests.length, 1);
    assert.equal(b.requests.length, 1);
  });

  test("a timeout is not retried on the other instance; neither is a 500 or a 409", async () => {
    reset();
    a.respond({ status: 201, body: "{}", delayMs: 2000 });
    b.respond({ status: 201, body: "{}", delayMs: 2000 });
    const res = await post(edge);
    await errorOf(res, 503, "ORIGIN_UNAVAILABLE");
    assert.equal(a.requests.length + b.requests.length, 1, "one attempt only");
    const [line] = await requestLines(edge, 1);
    assert.equal(line.origin_outcome, "timeout");
    for (const [status, code] of [
      [500, "INTERNAL"],
      [409, "IDEMPOTENCY_IN_PROGRESS"],
    ]) {
      reset();
      const body = { error: { code, message: "from origin", request_id: "x" } };
      a.respond({ status, body });
      b.respond({ status, body });
      const r = await post(edge);
      assert.equal(r.status, status);
      assert.deepEqual(await r.json(), body);
      assert.equal(a.requests.length + b.requests.length, 1, `${status} is passed back, not retried`);
    }
  });

  test("GETs fail over too", async () => {
    reset();
    let first;
    const failFirst = (name) => (req) => {
      if (!first) {
        first = name;
        return { status: 503, body: "down" };
      }
      return replies(name)(req);
    };
    a.respond(failFirst("a"));
    b.respond(failFirst("b"));
    const res = await edge.fetch("/v1/allocations/0192f0c1-7c7e-7000-8000-000000000001", {
      headers: { authorization: `Bearer ${key}` },
    });
    assert.equal(res.status, 200);
    assert.notEqual((await res.json()).served_by, first);
    assert.equal(a.requests.length + b.requests.length, 2);
  });

  test("/readyz asks both instances; pass when both are ready", async () => {
    reset();
    const res = await edge.fetch("/readyz");
    assert.equal(res.status, 200);
    const doc = await res.json();
    assert.equal(doc.status, "pass");
    assert.ok(doc.checks["postgres:primary"]);
    assert.deepEqual(
      doc.checks["origin:eu"].map((c) => [c.componentId, c.status]),
      [
        ["eu/1", "pass"],
        ["eu/2", "pass"],
      ],
    );
    assert.equal(a.requests.length, 1);
    assert.equal(b.requests.length, 1);
    assert.ok(!JSON.stringify(doc).includes(a.url), "no instance URL in the document");
  });
});

describe("a region with one live and one dead instance", () => {
  let live, edge, deadUrl;

  before(async () => {
    live = await startRecordingOrigin(replies("live"));
    deadUrl = `http://127.0.0.1:${await freePort()}`; // nothing listens here
    edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: [deadUrl, live.url] }) } });
  });
  after(async () => {
    await edge?.dispose();
    await live?.close();
  });

  test("every request succeeds: a refused connection fails over to the live instance", async () => {
    for (let i = 0; i < 10; i++) {
      const res = await post(edge);
      assert.equal(res.status, 201);
      assert.equal((await res.json()).allocation_id, "from-live");
    }
    assert.equal(live.requests.length, 10, "each request reached the live instance once");
    const lines = await requestLines(edge, 10);
    const attempts = lines.map((l) => l.origin_attempts).sort();
    // Half start at the dead one (2 attempts), half at the live one (1): round robin.
    assert.deepEqual(attempts, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    assert.ok(lines.every((l) => l.origin_instance === "eu/2" && l.origin_outcome === "answered"));
  });

  test("/readyz is ready (warn, 200) and says which instance is not", async () => {
    const res = await edge.fetch("/readyz");
    assert.equal(res.status, 200);
    const doc = await res.json();
    assert.equal(doc.status, "warn");
    assert.equal(doc.output, "1 of 2 eu origin instances not ready");
    assert.deepEqual(
      doc.checks["origin:eu"].map((c) => [c.componentId, c.status]),
      [
        ["eu/1", "fail"],
        ["eu/2", "pass"],
      ],
    );
    assert.match(doc.checks["origin:eu"][0].output, /unreachable/);
  });
});

test("a region whose instances are all down: /readyz 503, the API 503 after one attempt each", async () => {
  const dead = [`http://127.0.0.1:${await freePort()}`, `http://127.0.0.1:${await freePort()}`];
  const edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: dead }) } });
  try {
    const r = await edge.fetch("/readyz");
    assert.equal(r.status, 503);
    const doc = await r.json();
    assert.equal(doc.status, "fail");
    assert.equal(doc.checks["origin:eu"].length, 2);
    await errorOf(await post(edge), 503, "ORIGIN_UNAVAILABLE");
    const lines = await requestLines(edge, 2);
    assert.equal(lines.at(-1).origin_attempts, 2);
  } finally {
    await edge.dispose();
  }
});

test("bad ORIGINS lists fail /healthz, the reason only in the worker's log", async () => {
  const cases = [
    [{ eu: [] }, /region "eu" has an empty list of origins/],
    [{ eu: ["http://127.0.0.1:1", "http://127.0.0.1:1/"] }, /lists http:\/\/127\.0\.0\.1:1 twice/],
    [{ eu: ["http://127.0.0.1:1", "not a url"] }, /"not a url" of region "eu" is not a URL/],
    [{ eu: "http://127.0.0.1:1", us: [7] }, /origin 1 is not a string/],
  ];
  for (const [origins, why] of cases) {
    const edge = await startEdge({ bindings: { ORIGINS: JSON.stringify(origins), DEFAULT_REGION: "eu" } });
    try {
      const h = await edge.fetch("/healthz");
      assert.equal(h.status, 503, JSON.stringify(origins));
      assert.doesNotMatch(await h.text(), /ORIGINS/);
      await errorOf(await post(edge), 500, "INTERNAL");
      await sleep(100);
      assert.ok(
        edge.logs.some((l) => l.level === "error" && why.test(l.error)),
        `${JSON.stringify(origins)}: ${JSON.stringify(edge.logs)}`,
      );
    } finally {
      await edge.dispose();
    }
  }
});
