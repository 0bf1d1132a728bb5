// Secrets never reach logs or traces. A representative flow (allocations, replays, a mismatch,
// reads, the catalogue, bad and unknown keys, a bad signature) runs through the edge in front of a
// real `allot server` that exports its spans over OTLP (http/protobuf) to a collector here. Then every
// origin log line (stdout and stderr), every edge log line and every exported span payload is
// searched, byte for byte, for every card code handed out, every API key (whole and its secret
// part), the edge signing secret and the card encryption key. Protobuf carries strings verbatim,
// so a byte search finds them there as in the logs. Needs the stack (as e2e does).
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { gunzipSync } from "node:zlib";
import { startEdgeInFront } from "./lib/edge.mjs";
import { startOrigin } from "./lib/origin-process.mjs";
import { allocationBody, makeApiKey, randomHex, signedRequest, withBadChecksum } from "./lib/allot.mjs";
import { rawRequest } from "./lib/raw-http.mjs";

/** Where each secret occurs in the haystacks: [{ secret label, haystack label, offset }]. */
export function findSecrets(haystacks, secrets) {
  const hits = [];
  for (const s of secrets) {
    if (!s.value || s.value.length < 8) throw new Error(`secret ${s.label} is too short to search for: ${s.value}`);
    const needle = Buffer.from(s.value, "utf8");
    for (const h of haystacks) {
      const at = h.bytes.indexOf(needle);
      if (at >= 0) hits.push({ secret: s.label, in: h.label, offset: at });
    }
  }
  return hits;
}

/** The secret part of an API key `allot_<region>_<key id>_<secret 32><checksum 6>`. */
const secretOf = (key) => key.split("_")[3].slice(0, 32);

test("the secret search finds a planted secret in a log line and in a protobuf payload, and nothing else", () => {
  const code = "DEMO-AB12-CD34-EF56";
  const span = Buffer.concat([
    Buffer.from([0x0a, 0x12]),
    Buffer.from("allocation.create"),
    Buffer.from([0x2a, code.length]),
    Buffer.from(code),
    Buffer.from([0x10, 0x01]),
  ]);
  const haystacks = [
    { label: "log", bytes: Buffer.from(`{"level":"info","msg":"request","card":"${code}"}\n`) },
    { label: "span", bytes: span },
    { label: "clean", bytes: Buffer.from('{"level":"info","msg":"request","status":201}') },
  ];
  const hits = findSecrets(haystacks, [
    { label: "card code", value: code },
    { label: "absent", value: "never-anywhere-0123" },
  ]);
  assert.deepEqual(
    hits.map((h) => [h.secret, h.in]),
    [
      ["card code", "log"],
      ["card code", "span"],
    ],
  );
  assert.throws(() => findSecrets(haystacks, [{ label: "short", value: "abc" }]), /too short/);
});

test(
  "no card code, API key, signing secret or card key in origin logs, edge logs or exported spans",
  { timeout: 120_000 },
  async () => {
    // The OTLP collector: keeps every request body (gunzipped if need be), answers an empty export response.
    const payloads = [];
    const collector = http.createServer(async (req, res) => {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      let bytes = Buffer.concat(chunks);
      if (/gzip/i.test(req.headers["content-encoding"] ?? "")) bytes = gunzipSync(bytes);
      payloads.push({ path: req.url, contentType: req.headers["content-type"], bytes });
      res.writeHead(200, { "content-type": "application/x-protobuf" });
      res.end();
    });
    await new Promise((r) => collector.listen(0, "127.0.0.1", r));
    const otlp = `http://127.0.0.1:${collector.address().port}`;

    // Closed whatever happens below: a listening collector would keep this process alive.
    try {
      await scrubFlow(payloads, otlp, collector);
    } finally {
      collector.closeAllConnections();
      if (collector.listening) collector.close();
    }
  },
);

/** The flow, the flush and the search (the collector is the caller's to close). */
async function scrubFlow(payloads, otlp, collector) {
  const origin = await startOrigin({
    cardsPerDenomination: 20,
    env: {
      // origin/src/telemetry.rs: OTLP over HTTP/protobuf when this is set (appends /v1/traces).
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp,
      OTEL_SERVICE_NAME: "allot-scrub-test",
      OTEL_BSP_SCHEDULE_DELAY: "200",
      // Everything the origin might say, not only what it says by default.
      RUST_LOG: "debug,h2=info,hyper=info,hyper_util=info,reqwest=info",
    },
  });
  let edge;
  try {
    edge = await startEdgeInFront(origin);
    const edgeLogs = edge.logs;
    const secondKey = origin.issueKey();
    const unknownKey = makeApiKey("eu").key;
    const codes = [];
    const requestIds = [];
    const call = async (path, { key = origin.key, idem, body, ip = "198.51.100.90" } = {}) => {
      const headers = { authorization: `Bearer ${key}`, "cf-connecting-ip": ip };
      if (idem) headers["idempotency-key"] = idem;
      if (body) headers["content-type"] = "application/json";
      const res = await edge.fetch(path, { method: body ? "POST" : "GET", headers, body });
      const text = await res.text();
      requestIds.push(res.headers.get("x-request-id"));
      if (res.status === 201 || (res.status === 200 && path.startsWith("/v1/allocations/"))) {
        for (const card of JSON.parse(text).cards) {
          codes.push(card.code);
          if (card.pin) codes.push(card.pin);
        }
      }
      return { status: res.status, text };
    };

    // Allocations (two keys), a replay, a mismatch, reads, the catalogue.
    const idem = `scrub-${randomHex()}`;
    const first = await call("/v1/allocations", {
      idem,
      body: allocationBody({ denomination: "25.00", quantity: 3, client_reference: "scrub order" }),
    });
    assert.equal(first.status, 201, first.text);
    const allocationId = JSON.parse(first.text).allocation_id;
    assert.equal(
      (
        await call("/v1/allocations", {
          idem,
          body: allocationBody({ denomination: "25.00", quantity: 3, client_reference: "scrub order" }),
        })
      ).status,
      201,
    );
    assert.equal((await call("/v1/allocations", { idem, body: allocationBody({ quantity: 2 }) })).status, 422);
    for (const denomination of ["10.00", "50.00", "100.00"]) {
      const r = await call("/v1/allocations", {
        key: secondKey,
        idem: randomHex(),
        body: allocationBody({ denomination, quantity: 2 }),
      });
      assert.equal(r.status, 201, r.text);
    }
    assert.equal((await call(`/v1/allocations/${allocationId}`)).status, 200);
    assert.equal((await call(`/v1/allocations/${allocationId}`, { key: secondKey })).status, 200);
    assert.equal((await call("/v1/products")).status, 200);
    // Refusals: a bad checksum (edge), an unknown key (origin), a key sent twice, a bad body.
    assert.equal(
      (
        await call("/v1/allocations", {
          key: withBadChecksum(origin.key),
          idem: randomHex(),
          body: allocationBody(),
          ip: "198.51.100.91",
        })
      ).status,
      401,
    );
    assert.equal(
      (
        await call("/v1/allocations", {
          key: unknownKey,
          idem: randomHex(),
          body: allocationBody(),
          ip: "198.51.100.91",
        })
      ).status,
      401,
    );
    const twice = await rawRequest(edge.url, {
      path: "/v1/products",
      headers: [
        ["authorization", `Bearer ${origin.key}`],
        ["authorization", `Bearer ${secondKey}`],
      ],
    });
    assert.equal(twice.status, 401);
    assert.equal(
      (await call("/v1/allocations", { idem: randomHex(), body: allocationBody({ quantity: 99 }) })).status,
      400,
    );
    // Straight to the origin: a bad signature, and an unknown key under a good one.
    const direct = (req) => signedRequest(origin.url, { secret: origin.secret, body: allocationBody(), ...req });
    assert.equal(
      (
        await direct({
          authorization: `Bearer ${origin.key}`,
          idempotencyKey: randomHex(),
          signature: `t=1,n=${"0".repeat(32)},v2=${"0".repeat(64)}`,
        })
      ).status,
      401,
    );
    assert.equal((await direct({ authorization: `Bearer ${unknownKey}`, idempotencyKey: randomHex() })).status, 401);
    assert.equal(codes.length, 3 + 3 + 6 + 3 + 3, "codes from the allocations, the replay and the reads");

    await new Promise((r) => setTimeout(r, 300)); // the worker's log lines arrive through workerd's stdout
    await edge.dispose();
    edge = undefined;
    await origin.stop(); // SIGTERM: the origin flushes its spans before it exits
    collector.closeAllConnections();
    await new Promise((r) => collector.close(r)); // every export has been received

    // The search covers real material: spans arrived, and they carry the edge's request ids.
    assert.ok(payloads.length > 0, "the origin exported spans");
    assert.ok(
      payloads.every((p) => p.path === "/v1/traces"),
      JSON.stringify(payloads.map((p) => p.path)),
    );
    const spans = Buffer.concat(payloads.map((p) => p.bytes));
    assert.ok(spans.includes(Buffer.from("allocation.create")), "the allocation spans are there");
    assert.ok(spans.includes(Buffer.from(requestIds[0])), "span attributes are searchable as bytes");
    assert.ok(origin.logs.length > 20, `origin logged ${origin.logs.length} lines`);
    assert.ok(
      origin.logs.some((l) => l.includes(requestIds[0])),
      "origin logs carry the request ids",
    );

    const unique = [...new Set(codes)];
    const secrets = [
      ...unique.map((c, i) => ({ label: `card code #${i + 1}`, value: c })),
      ...[origin.key, secondKey, unknownKey].flatMap((k, i) => [
        { label: `API key #${i + 1}`, value: k },
        { label: `API key #${i + 1} secret part`, value: secretOf(k) },
      ]),
      { label: "edge signing secret", value: origin.secret },
      { label: "ALLOT_CARD_KEYS", value: origin.env.ALLOT_CARD_KEYS },
      { label: "card key material", value: origin.env.ALLOT_CARD_KEYS.split("=").slice(1).join("=") },
    ];
    const haystacks = [
      { label: "origin logs", bytes: Buffer.from(origin.logs.join("\n")) },
      {
        label: "edge logs",
        bytes: Buffer.from(edgeLogs.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n")),
      },
      ...payloads.map((p, i) => ({ label: `OTLP export #${i + 1}`, bytes: p.bytes })),
    ];
    assert.ok(edgeLogs.filter((l) => l.msg === "request").length >= 10, "the edge logged its requests");
    const hits = findSecrets(haystacks, secrets);
    assert.deepEqual(hits, [], `secrets found: ${JSON.stringify(hits)}`);
  } finally {
    await edge?.dispose();
    await origin.stop();
  }
}
