// Two `allot run-all` instances on one database and one cache, behind one edge (workerd) whose
// ORIGINS.eu lists both. Each instance runs the API, batches, the outbox relay and the scheduler.
//
//   1. Spread: both instances take allocations through the edge.
//   2. Fault: steady load from concurrent clients (each request its own Idempotency-Key, retried by
//      the client with the same key on a 5xx, a network error or 409 IDEMPOTENCY_IN_PROGRESS);
//      mid-load the instance holding the relay is killed with SIGKILL. Afterwards: one allocation per
//      request, replays give the same allocation, no card in two allocations, every card still in
//      Postgres, the other instance served after the kill (its own access log) and took the relay
//      over, every event in the stream exactly once and in order, and no job ran twice at once.
//      The audit line: requests, successes, duplicates, lost, retries, recovery.
//
// Needs the stack and its env, the allot binary and the edge build (scripts/test provides them).
// Env: ALLOT_INSTANCES_CLIENTS (default 16), ALLOT_INSTANCES_REQUESTS (per client, default 40).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { startEdgeInFront } from "./lib/edge.mjs";
import { stackEnv, startOrigin } from "./lib/origin-process.mjs";
import { allocationBody, randomHex } from "./lib/allot.mjs";

const CLIENTS = Number(process.env.ALLOT_INSTANCES_CLIENTS ?? 16);
const PER_CLIENT = Number(process.env.ALLOT_INSTANCES_REQUESTS ?? 40);
/** Each client's pause between its requests: a steady load that lasts, not one burst. */
const THINK_MS = 50;
/** The client's own bound on attempts per request (each attempt may be several edge attempts). */
const MAX_TRIES = 40;
const CARDS_PER_DENOMINATION = 400;
/** The standard demo catalogue has 8 denominations. */
const DENOMINATIONS = 8;
const BUCKETS = ["10.00", "25.00", "50.00", "100.00"].map((denomination) => ({ product_id: "gift-usd", denomination }));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The origin's access-log lines for POST /v1/allocations (JSON logs), with their time in ms. */
function allocationLines(origin) {
  const out = [];
  for (const raw of origin.logs) {
    let l;
    try {
      l = JSON.parse(raw);
    } catch {
      continue;
    }
    if (l.message !== "request" || l.span?.["http.route"] !== "/v1/allocations") continue;
    if (l.span?.["http.request.method"] !== "POST") continue;
    out.push({ at: Date.parse(l.timestamp), status: l.status, requestId: l.span?.request_id });
  }
  return out;
}

/** The first log line of `origin` whose message starts with `prefix`, parsed, or undefined. */
function logLine(origin, prefix) {
  for (const raw of origin.logs) {
    try {
      const l = JSON.parse(raw);
      if (typeof l.message === "string" && l.message.startsWith(prefix)) return l;
    } catch {
      // not JSON
    }
  }
  return undefined;
}

async function until(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

function redis(url, ...args) {
  return execFileSync("redis-cli", ["-u", url, "--raw", ...args], { encoding: "utf8" }).trim();
}

test("the stack's env is set (DATABASE_URL, VALKEY_URL)", () => {
  stackEnv();
});

describe("two run-all instances on one database and cache, behind one edge", () => {
  let a, b, edge;

  before(async () => {
    const env = { ALLOT_VALKEY_TIMEOUT_MS: "5000" };
    // Short job intervals, so both schedulers claim many ticks during the test.
    const setupSql =
      "INSERT INTO scheduled_jobs (name, interval_secs) VALUES ('stock-watch', 1), ('reconcile', 2) " +
      "ON CONFLICT (name) DO UPDATE SET interval_secs = EXCLUDED.interval_secs";
    a = await startOrigin({ command: "run-all", cardsPerDenomination: CARDS_PER_DENOMINATION, env, setupSql });
    b = await startOrigin({ command: "run-all", join: a });
    edge = await startEdgeInFront([a, b]);
  });
  after(async () => {
    await edge?.dispose();
    await b?.stop();
    await a?.stop();
  });

  function allocate(idem, body) {
    return edge.fetch("/v1/allocations", {
      method: "POST",
      headers: { authorization: `Bearer ${a.key}`, "idempotency-key": idem, "content-type": "application/json" },
      body,
    });
  }

  test("both instances take requests through the edge, and /readyz lists both", async () => {
    const before = [allocationLines(a).length, allocationLines(b).length];
    for (let i = 0; i < 20; i++) {
      const res = await allocate(`spread-${randomHex()}`, allocationBody(BUCKETS[0]));
      assert.equal(res.status, 201, await res.text());
    }
    const tookNow = () => [allocationLines(a).length - before[0], allocationLines(b).length - before[1]];
    // The origins' log lines arrive through pipes, a moment after the answers: wait for them.
    await until("both access logs", () => tookNow()[0] + tookNow()[1] >= 20, 10_000).catch(() => {});
    const took = tookNow();
    assert.equal(took[0] + took[1], 20, `one origin request per allocation: ${took}`);
    // One isolate counts round robin: exactly half each.
    assert.deepEqual(took, [10, 10]);
    const ready = await edge.fetch("/readyz");
    assert.equal(ready.status, 200);
    const doc = await ready.json();
    assert.equal(doc.status, "pass", JSON.stringify(doc));
    assert.deepEqual(
      doc.checks["origin:eu"].map((c) => [c.componentId, c.status]),
      [
        ["eu/1", "pass"],
        ["eu/2", "pass"],
      ],
    );
  });

  test("kill -9 of one instance mid-load: exactly once holds and the other takes the load", async () => {
    const relayOf = await until("a relay to take the stream", () =>
      [a, b].find((o) => logLine(o, "outbox relay active")),
    );
    const victim = relayOf;
    const survivor = victim === a ? b : a;
    const victimJobs = logLine(victim, "scheduler started")?.instance;
    assert.ok(victimJobs, "the victim's scheduler instance name");
    const baseline = Number(a.sql("SELECT count(*) FROM allocations"));

    const total = CLIENTS * PER_CLIENT;
    const killAfter = Math.floor(total / 3);
    /** @type {{idem: string, body: string, quantity: number, allocationId?: string, cards?: number[], doneAt?: number, tries: number}[]} */
    const requests = [];
    const unexpected = [];
    const successes = [];
    let retries = 0;
    let killedAt = null;

    async function one(idem, body, quantity) {
      const r = { idem, body, quantity, tries: 0 };
      requests.push(r);
      while (r.tries < MAX_TRIES) {
        r.tries++;
        let status = "network";
        let text = "";
        try {
          const res = await allocate(idem, body);
          status = res.status;
          text = await res.text();
        } catch (err) {
          text = String(err);
        }
        if (status === 201) {
          const alloc = JSON.parse(text);
          r.allocationId = alloc.allocation_id;
          r.cards = alloc.cards.map((c) => c.card_id);
          r.doneAt = Date.now();
          successes.push(r.doneAt);
          return;
        }
        const code = (() => {
          try {
            return JSON.parse(text).error.code;
          } catch {
            return undefined;
          }
        })();
        if (status === "network" || status >= 500 || code === "IDEMPOTENCY_IN_PROGRESS") {
          retries++;
          await sleep(Math.min(1000, 50 * r.tries));
          continue;
        }
        unexpected.push({ idem, status, text: text.slice(0, 300) });
        return;
      }
    }

    const clients = Array.from({ length: CLIENTS }, async (_, c) => {
      for (let i = 0; i < PER_CLIENT; i++) {
        const quantity = 1 + ((c + i) % 3);
        const body = allocationBody({ ...BUCKETS[(c + i) % BUCKETS.length], quantity });
        await one(`kill-${c}-${i}-${randomHex(4)}`, body, quantity);
        await sleep(THINK_MS);
      }
    });
    const killer = (async () => {
      await until("a third of the load", () => successes.length >= killAfter, 300_000);
      killedAt = Date.now();
      await victim.kill();
    })();
    const started = Date.now();
    await Promise.all([...clients, killer]);
    const ended = Date.now();

    // ---- the audit line
    const done = requests.filter((r) => r.allocationId);
    const ids = new Map();
    let duplicates = 0;
    for (const r of done) {
      if (ids.has(r.idem) && ids.get(r.idem) !== r.allocationId) duplicates++;
      ids.set(r.idem, r.allocationId);
    }
    const sorted = [killedAt, ...successes.filter((t) => t >= killedAt)].sort((x, y) => x - y);
    let recovery = 0;
    for (let i = 1; i < sorted.length; i++) recovery = Math.max(recovery, sorted[i] - sorted[i - 1]);
    const firstAfter = sorted.length > 1 ? sorted[1] - killedAt : NaN;
    const lost = requests.length - done.length;
    // The edge's own access log: requests it had to fail over (a refused or reset connection).
    const edgeLines = edge.logs.filter((l) => l.msg === "request" && l.route === "POST /v1/allocations");
    const failovers = edgeLines.filter((l) => l.ts >= killedAt && l.origin_attempts > 1).length;
    console.log(
      `instances audit: requests=${requests.length} successes=${done.length} duplicates=${duplicates} lost=${lost} ` +
        `retries=${retries} (by the clients) edge_failovers=${failovers} unexpected=${unexpected.length} ` +
        `first_success_after_kill_ms=${firstAfter} ` +
        `recovery_ms=${recovery} (longest gap between successes from the kill on) ` +
        `load_s=${((ended - started) / 1000).toFixed(1)} killed=${victim === a ? "eu/1" : "eu/2"}`,
    );
    assert.deepEqual(unexpected, []);
    assert.equal(requests.length, total);
    assert.equal(lost, 0, "every request got its 201");
    assert.equal(duplicates, 0);
    assert.ok(failovers > 0, "the edge failed over from the killed instance");

    // ---- replays: the same allocation and cards, marked as replays
    for (const r of done) {
      const res = await allocate(r.idem, r.body);
      assert.equal(res.status, 201);
      assert.equal(res.headers.get("idempotent-replayed"), "true");
      const again = await res.json();
      assert.equal(again.allocation_id, r.allocationId, r.idem);
      assert.deepEqual(
        again.cards.map((c) => c.card_id),
        r.cards,
      );
    }

    // ---- Postgres: one allocation per request, each card once, none lost
    const sum = done.reduce((n, r) => n + r.quantity, 0);
    const cardIds = done.flatMap((r) => r.cards);
    assert.equal(new Set(cardIds).size, cardIds.length, "no card in two allocations (as answered)");
    assert.equal(cardIds.length, sum);
    const sql = (q) => a.sql(q);
    assert.equal(Number(sql("SELECT count(*) FROM allocations")) - baseline, total, "one allocation per request");
    assert.equal(
      Number(sql("SELECT count(*) FROM allocations WHERE idempotency_key LIKE 'kill-%'")),
      total,
      "each key once",
    );
    assert.equal(
      Number(sql("SELECT count(DISTINCT idempotency_key) FROM allocations WHERE idempotency_key LIKE 'kill-%'")),
      total,
    );
    assert.equal(
      Number(
        sql(
          "SELECT count(*) FROM inventories i JOIN allocations al ON al.id = i.allocation_id " +
            "WHERE al.idempotency_key LIKE 'kill-%'",
        ),
      ),
      sum,
      "allocated cards = the sum of the 201s' quantities",
    );
    assert.equal(
      Number(
        sql(
          "SELECT count(*) FROM allocations al WHERE al.quantity <> " +
            "(SELECT count(*) FROM inventories i WHERE i.allocation_id = al.id)",
        ),
      ),
      0,
    );
    assert.equal(
      Number(sql("SELECT count(*) FROM inventories")),
      CARDS_PER_DENOMINATION * DENOMINATIONS,
      "no card lost",
    );
    assert.equal(Number(sql("SELECT count(*) FROM inventories WHERE status NOT IN ('active', 'allocated')")), 0);
    const answered = new Set(done.map((r) => r.allocationId));
    const stored = sql("SELECT id FROM allocations WHERE idempotency_key LIKE 'kill-%'").split("\n");
    assert.ok(
      stored.every((id) => answered.has(id)),
      "every stored allocation was answered",
    );

    // ---- the survivor served after the kill (its own access log) and took the relay over
    const servedAfter = allocationLines(survivor).filter((l) => l.at > killedAt && l.status === 201).length;
    const victimServed = allocationLines(victim).filter((l) => l.status === 201).length;
    console.log(
      `instances audit: allocation 201s by instance: victim ${victimServed} (before the kill), ` +
        `survivor ${allocationLines(survivor).filter((l) => l.status === 201).length} (${servedAfter} after the kill)`,
    );
    assert.ok(servedAfter > 0, "the survivor served after the kill");
    assert.ok(victimServed > 0, "the victim served before the kill");
    await until("the survivor to take the relay over", () => logLine(survivor, "outbox relay active"), 60_000);

    // ---- every event placed and published, in the stream once each, in order
    await until(
      "the relay to place and publish every event",
      () =>
        sql(
          "SELECT (SELECT count(*) FROM outbox WHERE seq IS NULL) = 0 " +
            "AND (SELECT published_seq = last_seq FROM outbox_sequence)",
        ) === "t",
      60_000,
    );
    const lastSeq = Number(sql("SELECT last_seq FROM outbox_sequence"));
    assert.ok(lastSeq >= total, `every allocation's event has a place (${lastSeq})`);
    assert.equal(
      Number(
        sql(
          "SELECT count(*) FROM outbox o JOIN allocations al ON al.id::text = o.aggregate_id " +
            "WHERE o.topic = 'allocation.created' AND al.idempotency_key LIKE 'kill-%'",
        ),
      ),
      total,
      "one allocation.created per allocation",
    );
    const { ALLOT_EVENTS_URL, VALKEY_URL } = process.env;
    const events = ALLOT_EVENTS_URL || VALKEY_URL;
    const stream = logLine(a, "outbox relay started").stream;
    assert.equal(Number(redis(events, "XLEN", stream)), lastSeq, "one stream entry per event");
    const firstId = redis(events, "XRANGE", stream, "-", "+", "COUNT", "1").split("\n")[0];
    const lastId = redis(events, "XREVRANGE", stream, "+", "-", "COUNT", "1").split("\n")[0];
    // Strictly increasing ids <seq>-0, lastSeq of them, from 1-0 to <lastSeq>-0: no gap, no repeat.
    assert.equal(firstId, "1-0");
    assert.equal(lastId, `${lastSeq}-0`);

    // ---- singleton jobs: no two runs of one job overlapped. The victim's run that was going when
    // it died stays `running` in job_runs (nobody closes it); it is taken as ending at the kill.
    const killTs = new Date(killedAt).toISOString();
    const overlaps = sql(
      `WITH r AS (
         SELECT id, job_name, instance, tstzrange(started_at,
                coalesce(finished_at, CASE WHEN instance = '${victimJobs}' THEN '${killTs}'::timestamptz
                                           ELSE now() END), '[)') AS span
           FROM job_runs WHERE outcome <> 'skipped')
       SELECT count(*) FROM r r1 JOIN r r2 ON r1.job_name = r2.job_name AND r1.id < r2.id AND r1.span && r2.span`,
    );
    const runs = sql(
      "SELECT instance || ' ' || outcome || ' ' || count(*) FROM job_runs GROUP BY instance, outcome ORDER BY 1",
    );
    console.log(`instances audit: job runs by instance and outcome: ${runs.split("\n").join(", ")}`);
    assert.equal(Number(overlaps), 0, "no job ran twice at once");
    assert.equal(
      Number(sql("SELECT count(*) FROM (SELECT 1 FROM job_runs WHERE slot IS NOT NULL GROUP BY job_name, slot HAVING count(*) > 1) d")),
      0,
      "each tick claimed once",
    );
  });
});
