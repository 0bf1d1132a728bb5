// allot's wire contract re-implemented in JavaScript for the tests, independently of the Rust code:
// API keys (format + base62 CRC32 checksum), the edge→origin signature, and small utilities.
import { createHash, createHmac, randomBytes, randomInt, timingSafeEqual } from "node:crypto";
import net from "node:net";
import { crc32 } from "node:zlib";

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

function base62Random(len) {
  let out = "";
  while (out.length < len) {
    for (const b of randomBytes(len * 2)) {
      if (b < 248 && out.length < len) out += BASE62[b % 62];
    }
  }
  return out;
}

function checksum(body) {
  let n = crc32(body);
  let out = "";
  for (let i = 0; i < 6; i++) {
    out = BASE62[n % 62] + out;
    n = Math.floor(n / 62);
  }
  return out;
}

/**
 * A well-formed API key `allot_<region>_<16 id>_<32 secret><6 checksum>` (valid format and checksum;
 * no origin knows it unless it was issued there).
 */
export function makeApiKey(region = "eu", keyId = base62Random(16), secret = base62Random(32)) {
  const body = `allot_${region}_${keyId}_${secret}`;
  return { key: body + checksum(body), keyId, secret, region };
}

/** The same key with one secret character changed: a checksum mismatch. */
export function withBadChecksum(key) {
  const i = key.length - 10;
  return key.slice(0, i) + (key[i] === "a" ? "b" : "a") + key.slice(i + 1);
}

/** The API key id inside an `Authorization: Bearer allot_<region>_<key id>_…` value ("" if none). */
export function keyIdOf(authorization) {
  const m = /^bearer\s+allot_[a-z0-9-]+_([0-9A-Za-z]{16})_/i.exec((authorization ?? "").trim());
  return m ? m[1] : "";
}

/**
 * `allot-signature` value (version 2) for a request: HMAC-SHA256 over
 * `allot-v2\n<t>\n<nonce>\n<METHOD>\n<path and query>\n<key id>\n<Idempotency-Key>\n<hex SHA-256 of the body>`.
 */
export function sign(
  secret,
  ts,
  { method, pathAndQuery, keyId = "", idempotencyKey = "", body, nonce = randomHex(16) },
) {
  const digest = createHash("sha256")
    .update(body ?? Buffer.alloc(0))
    .digest("hex");
  const canonical = `allot-v2\n${ts}\n${nonce}\n${method.toUpperCase()}\n${pathAndQuery}\n${keyId}\n${idempotencyKey}\n${digest}`;
  return `t=${ts},n=${nonce},v2=${createHmac("sha256", secret).update(canonical).digest("hex")}`;
}

/**
 * Verify the `allot-signature` of a forwarded request (Node's lower-case `headers`), covering the key
 * id from its Authorization and its Idempotency-Key. Returns { ts, nonce }; throws when the header
 * is missing, malformed, stale (> maxSkew s) or wrong.
 */
export function verifySignature(headers, secret, method, pathAndQuery, body, maxSkewSecs = 60) {
  const header = headers["allot-signature"];
  const m = /^t=(\d{1,12}),n=([0-9a-f]{32}),v2=([0-9a-f]{64})$/.exec(header ?? "");
  if (!m) throw new Error(`malformed allot-signature: ${header}`);
  const ts = Number(m[1]);
  const skew = Math.abs(Math.floor(Date.now() / 1000) - ts);
  if (skew > maxSkewSecs) throw new Error(`stale allot-signature (${skew} s)`);
  const expected = sign(secret, ts, {
    method,
    pathAndQuery,
    keyId: keyIdOf(headers.authorization),
    idempotencyKey: headers["idempotency-key"] ?? "",
    body,
    nonce: m[2],
  });
  const want = Buffer.from(expected.split("v2=")[1], "hex");
  if (!timingSafeEqual(want, Buffer.from(m[3], "hex"))) throw new Error("allot-signature does not verify");
  return { ts, nonce: m[2] };
}

/** Parse a W3C traceparent (version 00) or return null. */
export function parseTraceparent(value) {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(value ?? "");
  if (!m || /^0+$/.test(m[1]) || /^0+$/.test(m[2])) return null;
  return { traceId: m[1], parentId: m[2], flags: m[3] };
}

/** Ports this process has handed out: none is handed out twice. */
const handedOut = new Set();

/** Whether a server could listen on `port` of 127.0.0.1 now. */
async function bindable(port) {
  const srv = net.createServer();
  const ok = await new Promise((resolve) => {
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => resolve(true));
  });
  if (ok) await new Promise((resolve) => srv.close(resolve));
  return ok;
}

/**
 * A free TCP port on 127.0.0.1 for a server a test starts. Drawn at random below Linux's
 * ephemeral range (32768+), never asked of the kernel: some kernels give `listen(0)` the same
 * port every time, so two ports picked one after the other came out equal.
 */
export async function freePort() {
  for (let i = 0; i < 10_000; i++) {
    const port = 20_000 + randomInt(12_000);
    if (handedOut.has(port) || !(await bindable(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error("no free loopback port in 20000..32000");
}

/** Random lower-case hex. */
export function randomHex(bytes = 8) {
  return randomBytes(bytes).toString("hex");
}

/** A valid allocation body. */
export function allocationBody(overrides = {}) {
  return JSON.stringify({ product_id: "gift-usd", denomination: "25.00", quantity: 1, ...overrides });
}

/**
 * One request straight to an origin, signed (v2) the way the edge signs: over the method, path and
 * query, the key id of the Authorization, the Idempotency-Key and the body, as the origin will read
 * them (a field given as an array is sent as that many header lines and read joined with ", ").
 * `signAs` overrides what is signed (to sign one thing and send another); `signature` replaces the
 * header (null: none). Uses a raw socket, so the bytes and repeats are exactly as given.
 *
 * @param {string} base  origin URL
 * @param {{method?: string, path?: string, authorization?: string | string[], idempotencyKey?: string | string[] | null,
 *          body?: string | Buffer, headers?: Array<[string, string]>, secret: string,
 *          signAs?: object, signature?: string | null, ts?: number, nonce?: string}} req
 */
export async function signedRequest(base, req) {
  const { rawRequest } = await import("./raw-http.mjs");
  const method = req.method ?? (req.body === undefined ? "GET" : "POST");
  const path = req.path ?? "/v1/allocations";
  const list = (v) => (v === undefined || v === null ? [] : Array.isArray(v) ? v : [v]);
  const auth = list(req.authorization);
  const idem = list(req.idempotencyKey);
  const body =
    req.body === undefined ? undefined : Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body, "utf8");
  const signed = {
    method,
    pathAndQuery: path,
    keyId: keyIdOf(auth.join(", ")),
    idempotencyKey: idem.join(", "),
    body: body ?? Buffer.alloc(0),
    ...(req.nonce ? { nonce: req.nonce } : {}),
    ...req.signAs,
  };
  const signature =
    req.signature === undefined ? sign(req.secret, req.ts ?? Math.floor(Date.now() / 1000), signed) : req.signature;
  const headers = [
    ...auth.map((v) => ["authorization", v]),
    ...idem.map((v) => ["idempotency-key", v]),
    ...(signature === null ? [] : [["allot-signature", signature]]),
    ...(body === undefined ? [] : [["content-length", String(body.length)]]),
    ...(req.headers ?? []),
  ];
  return rawRequest(base, { method, path, headers, body, timeoutMs: req.timeoutMs ?? 30_000 });
}
