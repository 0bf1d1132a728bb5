// The bad-input table (tests/lib/bad-input-cases.mjs), each case sent (a) to the edge (workerd via
// Miniflare, over real HTTP, in front of a real `allot server`) and (b) straight to that origin,
// signed v2 exactly as the edge signs. Both must answer the table's status and code in the shared
// error shape, and agree with each other; nothing may be written. Needs the stack (as e2e does).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEdge } from "./lib/edge.mjs";
import { startOrigin } from "./lib/origin-process.mjs";
import { keyIdOf, makeApiKey, randomHex, sign, withBadChecksum } from "./lib/allot.mjs";
import { rawRequest } from "./lib/raw-http.mjs";
import { CASES, NO_BODY, body as validBody, countsByCategory, u8 } from "./lib/bad-input-cases.mjs";

/** shared/src/error.rs: each code's one status. */
const STATUS_OF = {
  VALIDATION_FAILED: 400,
  IDEMPOTENCY_KEY_REQUIRED: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  REQUEST_TIMEOUT: 408,
  IDEMPOTENCY_IN_PROGRESS: 409,
  OUT_OF_STOCK: 409,
  PAYLOAD_TOO_LARGE: 413,
  IDEMPOTENCY_MISMATCH: 422,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  ORIGIN_UNAVAILABLE: 503,
};
/** Server-side body deadline on both sides (short: the held-open cases wait this long). */
const BODY_TIMEOUT_MS = 1000;
const HIGH = 1_000_000;

test("the table has at least 200 cases, each with a known code of the right status", () => {
  assert.ok(CASES.length >= 200, `${CASES.length} cases`);
  for (const c of CASES) {
    assert.equal(STATUS_OF[c.code], c.status, `case ${c.id} ${c.name}`);
    assert.ok(!c.only || c.only === "edge" || c.only === "origin", `case ${c.id}`);
  }
  console.log(`bad-input cases per category: ${JSON.stringify(countsByCategory())}`);
});

describe("bad input: the edge and the origin refuse alike, in the shared shape, writing nothing", () => {
  let origin, edge, strict, keys, countsBefore;

  /** Tables an allocation writes to (the idempotency key lives on the allocation row). */
  const COUNTS = {
    allocations: "SELECT count(*) FROM allocations",
    live_idempotency_keys: "SELECT count(*) FROM allocations WHERE request_fingerprint IS NOT NULL",
    cards_not_active: "SELECT count(*) FROM inventories WHERE status <> 'active'",
    outbox: "SELECT count(*) FROM outbox",
  };
  const counts = () => Object.fromEntries(Object.entries(COUNTS).map(([k, q]) => [k, Number(origin.sql(q))]));

  before(async () => {
    origin = await startOrigin({
      cardsPerDenomination: 20,
      env: { ALLOT_BODY_READ_TIMEOUT_MS: String(BODY_TIMEOUT_MS) },
    });
    const bindings = {
      ORIGINS: JSON.stringify({ eu: origin.url }),
      EDGE_SIGNING_SECRET: origin.secret,
      BODY_TIMEOUT_MS: String(BODY_TIMEOUT_MS),
      RL_KEY_LIMIT: String(HIGH),
    };
    edge = await startEdge({
      bindings: { ...bindings, RL_AUTH_FAIL_LIMIT: String(HIGH) },
      ratelimits: {
        RL_KEY_DEFAULT: { simple: { limit: HIGH, period: 60 } },
        RL_AUTH_FAIL_IP: { simple: { limit: HIGH, period: 60 } },
      },
    });
    strict = await startEdge({
      bindings: { ...bindings, RL_AUTH_FAIL_LIMIT: "1" },
      ratelimits: {
        RL_KEY_DEFAULT: { simple: { limit: HIGH, period: 60 } },
        RL_AUTH_FAIL_IP: { simple: { limit: 1, period: 60 } },
      },
    });
    keys = {
      KEY: origin.key,
      KEY_LOWER: origin.key.toLowerCase(),
      UNKNOWN: makeApiKey("eu").key,
      BADSUM: withBadChecksum(origin.key),
      US: makeApiKey("us").key,
    };
    // The tables the counts read must exist, or "nothing changed" would prove nothing.
    const tables = origin
      .sql(
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'",
      )
      .split(",");
    for (const t of ["allocations", "inventories", "outbox"]) assert.ok(tables.includes(t), `table ${t}: ${tables}`);
    countsBefore = counts();
  });
  after(async () => {
    await edge?.dispose();
    await strict?.dispose();
    await origin?.stop();
  });

  const fill = (v) => v.replace(/\{(KEY|KEY_LOWER|UNKNOWN|BADSUM|US)\}/g, (_m, k) => keys[k]);
  // Header values: characters above U+00FF go as their UTF-8 bytes, others as one byte each.
  const enc = (v) => (/[^\x00-\xff]/.test(v) ? u8(v) : v);
  const list = (v) => (v === undefined || v === null ? [] : Array.isArray(v) ? v : [v]);

  /** The request a case describes, for one side. */
  function build(c, side) {
    const method = c.method ?? (c.path && c.body === undefined ? "GET" : "POST");
    const path = c.path ?? "/v1/allocations";
    const auth = (c.auth === undefined ? ["Bearer {KEY}"] : list(c.auth)).map(fill);
    const idem = c.idem === undefined ? (method === "POST" ? [`bad-${randomHex()}`] : []) : list(c.idem);
    let bytes;
    if (c.body === NO_BODY) bytes = undefined;
    else if (c.body !== undefined) bytes = Buffer.isBuffer(c.body) ? c.body : Buffer.from(c.body, "utf8");
    else if (method === "POST") bytes = Buffer.from(validBody());
    const headers = [...auth.map((v) => ["authorization", enc(v)]), ...idem.map((v) => ["idempotency-key", enc(v)])];
    const extra = c.headers ?? [];
    if (bytes !== undefined && !c.noContentType && !extra.some(([n]) => n === "content-type")) {
      headers.push(["content-type", "application/json"]);
    }
    headers.push(...extra);
    let wire = bytes;
    if (bytes !== undefined && c.chunked) {
      headers.push(["transfer-encoding", "chunked"]);
      const frame = [Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from("\r\n")];
      if (!c.unterminated) frame.push(Buffer.from("0\r\n\r\n"));
      wire = Buffer.concat(frame);
    } else if (bytes !== undefined) {
      headers.push(["content-length", String(c.contentLength ?? bytes.length)]);
    }
    if (side === "edge") {
      headers.push(["cf-connecting-ip", c.ip ?? `198.18.${Math.floor(c.id / 250)}.${c.id % 250}`]);
    } else {
      // Signed over what the origin reads: the joined fields, the body's bytes (unframed).
      const now = Math.floor(Date.now() / 1000);
      const signed = {
        method,
        // The origin reads the request line's bytes as UTF-8 (the table writes them one char per byte).
        pathAndQuery: Buffer.from(path, "latin1").toString("utf8"),
        keyId: keyIdOf(auth.join(", ")),
        idempotencyKey: idem.join(", "),
        body: bytes ?? Buffer.alloc(0),
        ...c.signAs,
      };
      const signWith = (secret, ts, over = {}) => sign(secret, ts, { ...signed, ...over });
      const value = c.signature ? c.signature(origin.secret, now, signWith) : signWith(origin.secret, now);
      for (const v of list(value)) headers.push(["allot-signature", v]);
    }
    return { method, path, headers, body: wire, then: c.then ?? "done", timeoutMs: 30_000 };
  }

  /** Status, code and message of an answer in exactly the shared error shape. */
  function shapeOf(res, c, side) {
    const where = `case ${c.id} (${c.category}: ${c.name}) at the ${side}: ${res.status} ${res.headers["content-type"]} ${res.text().slice(0, 300)}`;
    assert.equal(res.headers["content-type"], "application/json", where);
    let doc;
    assert.doesNotThrow(() => (doc = res.json()), where);
    assert.deepEqual(Object.keys(doc), ["error"], where);
    const e = doc.error;
    for (const k of Object.keys(e))
      assert.ok(["code", "message", "request_id", "details"].includes(k), `${where}: key ${k}`);
    assert.equal(typeof e.code, "string", where);
    assert.equal(typeof e.message, "string", where);
    if ("request_id" in e) assert.equal(typeof e.request_id, "string", where);
    if ("details" in e) assert.ok(e.details && typeof e.details === "object", where);
    assert.equal(res.status, STATUS_OF[e.code], `${where}: the code's status`);
    assert.equal(res.status, c.status, `${where}: status`);
    assert.equal(e.code, c.code, `${where}: code`);
    if (c.field) assert.equal(e.details?.field, c.field, `${where}: details.field`);
    return { status: res.status, code: e.code, message: e.message };
  }

  async function send(c, side) {
    const target = side === "origin" ? origin.url : c.edge === "strict" ? strict.url : edge.url;
    if (side === "edge") {
      for (let i = 0; i < (c.warmup ?? 0); i++) await rawRequest(target, build(c, side));
    }
    return rawRequest(target, build(c, side));
  }

  for (const c of CASES) {
    const sides = c.only ? [c.only] : ["edge", "origin"];
    const label = `${String(c.id).padStart(3, "0")} ${c.category}: ${c.name}${c.only ? ` [${c.only} only]` : ""}`;
    test(label, { todo: c.awaits }, async (t) => {
      const answers = {};
      for (const side of sides) answers[side] = shapeOf(await send(c, side), c, side);
      if (answers.edge && answers.origin) {
        assert.equal(answers.edge.status, answers.origin.status);
        assert.equal(answers.edge.code, answers.origin.code);
        if (c.sameMessage !== false) {
          assert.equal(answers.edge.message, answers.origin.message, `case ${c.id}: the same message from both`);
        } else if (answers.edge.message !== answers.origin.message) {
          t.diagnostic(`edge: ${answers.edge.message} | origin: ${answers.origin.message}`);
        }
      }
    });
  }

  test("nothing was written: allocations, live keys, cards taken and the outbox are as before the table", () => {
    assert.deepEqual(counts(), countsBefore);
  });

  test("the control: the same setup does allocate a valid request (so the refusals above mean something)", async () => {
    const c = { id: 9999, body: validBody(), status: 201 };
    const viaEdge = await rawRequest(edge.url, build(c, "edge"));
    assert.equal(viaEdge.status, 201, viaEdge.text());
    const direct = await rawRequest(origin.url, build(c, "origin"));
    assert.equal(direct.status, 201, direct.text());
    const after = counts();
    assert.equal(after.allocations, countsBefore.allocations + 2);
    assert.equal(after.outbox, countsBefore.outbox + 2);
    assert.equal(after.cards_not_active, countsBefore.cards_not_active + 2);
  });
});
