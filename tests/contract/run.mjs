// The contract run: a real origin (its own database, the demo seed) and the real edge in workerd in
// front of it, then schemathesis against the EDGE with the callers' document the edge serves
// (GET /v1/openapi.json), the demo API key in Authorization, and tests/contract/hooks.py giving
// every allocation a fresh Idempotency-Key. Stops both and exits with schemathesis' status.
// Started by scripts/contract-test (which makes the virtualenv and builds what is missing):
//
//   node tests/contract/run.mjs <path to the schemathesis executable> [more schemathesis options]
//
// Rate limits are set far above what a run sends (the edge's per key and per IP, the origin's per
// client), so a 429 never decides a case. Env: ALLOT_BIN (the allot binary; default
// target/debug/allot), ALLOT_CONTRACT_SEED (reproduce a run's seed), ALLOT_CONTRACT_EXAMPLES
// (cases per operation and phase, default 200), ALLOT_CONTRACT_REPORT_DIR (the JUnit report and
// the document tested; default .stack/test-output/contract).
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT, DEFAULT_RATELIMITS, startEdge } from "../lib/edge.mjs";
import { startOrigin } from "../lib/origin-process.mjs";

const [schemathesis, ...extra] = process.argv.slice(2);
if (!schemathesis) {
  console.error("usage: node tests/contract/run.mjs <schemathesis executable> [options]");
  process.exit(2);
}
const HIGH = 1_000_000;
const examples = process.env.ALLOT_CONTRACT_EXAMPLES ?? "200";
const reportDir = process.env.ALLOT_CONTRACT_REPORT_DIR ?? path.join(REPO_ROOT, ".stack", "test-output", "contract");
mkdirSync(reportDir, { recursive: true });

/**
 * The checks every answer must pass: no 5xx; documented statuses, schemas, content types and
 * headers; schema-breaking input refused; a created allocation readable at once and never after it
 * is gone; no answer without the key. Left out, on purpose: positive_data_acceptance (a cursor is
 * any string to the schema but only one this API made is accepted, and `2.0` is an integer to JSON
 * Schema but quantity must be written `2`), missing_required_header (the key is sent as a fixed
 * header, which schemathesis cannot take away), unsupported_method and allow_header_conformance
 * (a method a path does not serve is 404 by design: the edge never forwards it, and says so in
 * the shared error shape).
 */
const CHECKS = [
  "not_a_server_error",
  "status_code_conformance",
  "content_type_conformance",
  "response_schema_conformance",
  "response_headers_conformance",
  "negative_data_rejection",
  "use_after_free",
  "ensure_resource_availability",
  "ignored_auth",
];

/**
 * A funding account for the demo client (its fixed id: origin/src/demo.rs DEMO_CLIENT_ID), in EUR
 * with a deposit far above what a run can spend on games-eur, so GET /v1/balance and
 * GET /v1/ledger answer real accounts and entries (and the balance's link to the ledger has a
 * currency to follow), while allocations are never refused for funds.
 */
const DEMO_CLIENT_ID = "00000000-0000-7000-8000-00000000de30";
const FUND_DEMO_CLIENT = `
  INSERT INTO funding_accounts (client_id, currency, credit_limit_minor, low_balance_minor)
       VALUES ('${DEMO_CLIENT_ID}', 'EUR', 50000, 10000);
  INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, memo)
       VALUES ('${DEMO_CLIENT_ID}', 'EUR', 'deposit', 'deposits', 'client', 100000000, 'contract run top-up');
  UPDATE funding_accounts SET balance_minor = 100000000
   WHERE client_id = '${DEMO_CLIENT_ID}' AND currency = 'EUR';`;

let origin;
let edge;
let child;
let stopping = false;

async function stopAll() {
  await edge?.dispose().catch(() => {});
  await origin?.stop().catch(() => {});
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    child?.kill(signal);
    void stopAll().finally(() => process.exit(130));
  });
}

async function main() {
  // Enough cards that the run rarely drains a denomination (a drained one answers 409, which is
  // documented, but leaves the 201 paths less covered).
  origin = await startOrigin({
    bin: process.env.ALLOT_BIN || undefined,
    cardsPerDenomination: 300,
    setupSql: FUND_DEMO_CLIENT,
    env: { ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE: String(HIGH) },
  });
  edge = await startEdge({
    bindings: {
      ORIGINS: JSON.stringify({ eu: origin.url }),
      EDGE_SIGNING_SECRET: origin.secret,
      RL_KEY_LIMIT: String(HIGH),
      RL_AUTH_FAIL_LIMIT: String(HIGH),
    },
    ratelimits: {
      ...DEFAULT_RATELIMITS,
      RL_KEY_DEFAULT: { simple: { limit: HIGH, period: 60 } },
      RL_AUTH_FAIL_IP: { simple: { limit: HIGH, period: 60 } },
    },
  });
  const base = edge.url.toString().replace(/\/$/, "");
  console.log(`contract: origin ${origin.url}, edge ${base}`);
  // The document as the edge serves it, saved to a file: schemathesis leaves out the operation
  // that serves the document it was loaded from, and GET /v1/openapi.json is one to test too.
  const served = await fetch(`${base}/v1/openapi.json`);
  if (served.status !== 200) throw new Error(`the edge answered ${served.status} for /v1/openapi.json`);
  const documentPath = path.join(reportDir, "openapi.json");
  writeFileSync(documentPath, await served.text());

  const args = [
    "--config-file",
    path.join(REPO_ROOT, "tests", "contract", "schemathesis.toml"),
    "run",
    documentPath,
    "--url",
    base,
    "--header",
    `Authorization: Bearer ${origin.key}`,
    "--checks",
    CHECKS.join(","),
    "--phases",
    "examples,coverage,fuzzing,stateful",
    "--mode",
    "all",
    "--max-examples",
    examples,
    // One worker: Python 3.11's ast.parse can fail under threads (a SystemError inside
    // hypothesis' lambda descriptions), which would be schemathesis' error, not the API's.
    "--workers",
    "1",
    "--request-timeout",
    "30",
    "--generation-database",
    "none",
    "--report",
    "junit",
    "--report-junit-path",
    path.join(reportDir, "junit.xml"),
  ];
  if (process.env.ALLOT_CONTRACT_SEED) args.push("--seed", process.env.ALLOT_CONTRACT_SEED);
  if (process.env.CI === "true" || process.env.NO_COLOR) args.push("--no-color");
  args.push(...extra);

  child = spawn(schemathesis, args, {
    stdio: "inherit",
    env: { ...process.env, SCHEMATHESIS_HOOKS: path.join(REPO_ROOT, "tests", "contract", "hooks.py") },
  });
  const code = await new Promise((resolve) => child.once("close", (c, signal) => resolve(c ?? (signal ? 1 : 0))));
  const serverErrors = origin.logs.filter((l) => /"level":"ERROR"/.test(l));
  if (serverErrors.length) {
    console.log(`contract: the origin logged ${serverErrors.length} ERROR line(s); the first:\n${serverErrors[0]}`);
  }
  return code;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`contract: ${err?.stack ?? err}`);
} finally {
  await stopAll();
}
process.exit(code);
