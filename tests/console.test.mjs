// The operator console in a real browser: Debian's Chromium, headless, driven by puppeteer-core,
// against a real `allot server` (its own database on the stack's Postgres, the stack's Valkey).
// Every page it visits is saved as a screenshot under .stack/test-output/console/
// (ALLOT_TEST_OUTPUT overrides the folder).
//
// Needs the stack and its env, and Chromium (scripts/install-deps installs it):
//   scripts/stack up && eval "$(scripts/stack env)" && cargo build -p allot-origin
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { launchBrowser } from "./lib/browser.mjs";
import { REPO_ROOT } from "./lib/edge.mjs";
import { startOrigin } from "./lib/origin-process.mjs";
import { allocationBody, keyIdOf, randomHex, signedRequest } from "./lib/allot.mjs";

const OUTPUT = process.env.ALLOT_TEST_OUTPUT ?? path.join(REPO_ROOT, ".stack", "test-output", "console");
/** Generous: the machine may be loaded, and nothing here measures time. */
const WAIT_MS = 60_000;

describe("the operator console in headless Chromium", () => {
  let origin, browser, base, adminToken, viewerToken, work;
  /** Content-Security-Policy complaints and script errors seen on any page. */
  const problems = [];

  before(async () => {
    mkdirSync(OUTPUT, { recursive: true });
    work = mkdtempSync(path.join(os.tmpdir(), "allot-console-"));
    origin = await startOrigin({ cardsPerDenomination: 60 });
    base = origin.operatorUrl;
    adminToken = origin.operatorToken("admin", "Ana Admin");
    viewerToken = origin.operatorToken("viewer", "Vic Viewer");
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await origin?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** A page in its own browser context (its own cookies), watched for CSP and script errors. */
  async function newPage() {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.setDefaultNavigationTimeout(WAIT_MS);
    page.on("console", (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(`${page.url()}: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`${page.url()}: ${e.message}`));
    page.on("dialog", (d) => d.accept());
    return page;
  }

  const shot = (page, name) => page.screenshot({ path: path.join(OUTPUT, `${name}.png`), fullPage: true });

  async function go(page, p) {
    const res = await page.goto(base + p);
    return res.status();
  }

  /** Click and wait for the page it leads to. */
  async function submit(page, selector) {
    await Promise.all([page.waitForNavigation(), page.click(selector)]);
  }

  async function signIn(page, token) {
    await go(page, "/ops/stock");
    assert.match(page.url(), /\/ops\/sign-in\?next=%2Fops%2Fstock$/, "a page without a session asks to sign in");
    await page.type("#token", token);
    await submit(page, "main form button[type=submit]");
    assert.equal(new URL(page.url()).pathname, "/ops/stock");
  }

  const text = (page, selector) => page.$eval(selector, (el) => el.textContent.trim());
  const notice = (page) => text(page, "main .notice");

  let admin;

  test("a wrong token is refused in words; the right one signs in and shows stock", async () => {
    admin = await newPage();
    await go(admin, "/ops/sign-in");
    await shot(admin, "sign-in");
    await admin.type("#token", "allotop_not_a_real_token");
    await submit(admin, "main form button[type=submit]");
    assert.match(await notice(admin), /The operator token is malformed\./);

    await signIn(admin, adminToken);
    const rows = await admin.$$eval("#stock tbody tr", (trs) =>
      trs.map((tr) => ({ bucket: tr.dataset.bucket, state: tr.querySelector(".state")?.textContent })),
    );
    // 60 cards a bucket, at or below the default threshold of 100: every bucket is low.
    assert.ok(rows.some((r) => r.bucket === "gift-usd|25.00" && r.state === "low"), JSON.stringify(rows));
    assert.equal(await admin.$eval("tr[data-bucket='gift-usd|25.00'] .state", (s) => s.className), "state state-low");
    assert.equal(await admin.$$eval("svg.chart rect.bar", (b) => b.length), 24, "the 24-hour chart");
    assert.match(await text(admin, "header .whoami"), /Ana Admin\s+admin/);
    await shot(admin, "stock-before-allocations");
  });

  test("a CSV upload's progress bar reaches 100 %, then a card is voided and its audit row found", async () => {
    const codes = Array.from({ length: 4000 }, (_, i) => `CONSOLE-${randomHex(6)}-${i}`);
    const csv = path.join(work, "cards.csv");
    writeFileSync(csv, `code,pin\n${codes.map((c) => `${c},${1000 + (c.length % 9)}`).join("\n")}\n`);

    await go(admin, "/ops/imports");
    await admin.select("#import-form select[name=bucket]", "gift-usd|25.00");
    const input = await admin.$("#import-form input[type=file]");
    await input.uploadFile(csv);
    // Record every value the bar shows while the script follows the import.
    await admin.evaluate(() => {
      window.seenProgress = [];
      setInterval(() => window.seenProgress.push(document.getElementById("import-progress").value), 20);
    });
    await admin.click("#import-form button[type=submit]");
    await admin.waitForFunction(() => /Committed/.test(document.getElementById("import-status").textContent));
    const seen = await admin.evaluate(() => window.seenProgress);
    assert.equal(await admin.$eval("#import-progress", (p) => p.value), 100);
    assert.match(await text(admin, "#import-status"), /Committed: 4,000 cards imported\./);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], `the bar never goes back: ${seen}`);
    await shot(admin, "imports-upload");

    const importPath = await admin.$eval("#import-report a", (a) => new URL(a.href).pathname);
    const importId = importPath.split("/").pop();
    assert.equal(Number(origin.sql(`SELECT count(*) FROM inventories WHERE import_id = '${importId}'`)), 4000);
    await go(admin, importPath);
    assert.match(await text(admin, "main"), /No problems\./);
    await shot(admin, "import");

    // A file with problems: nothing imported, the problems by line in words.
    const bad = path.join(work, "bad.csv");
    writeFileSync(bad, `code\n${codes[0]}\nOK-${randomHex(6)}\n`);
    await go(admin, "/ops/imports");
    await (await admin.$("#import-form input[type=file]")).uploadFile(bad);
    await admin.click("#import-form button[type=submit]");
    await admin.waitForFunction(() => !document.getElementById("import-report").hidden);
    assert.match(await text(admin, "#import-status"), /The file has 1 problem; nothing was imported/);
    assert.match(await text(admin, "#import-report"), /Line 2: this code is already loaded/);
    await submit(admin, "#import-report a");
    assert.match(await text(admin, "#problems"), /this code is already loaded/);
    await shot(admin, "import-rejected");

    const cardId = origin.sql(`SELECT id FROM inventories WHERE import_id = '${importId}' ORDER BY id LIMIT 1`);
    await go(admin, "/ops/cards");
    await admin.type("form[action='/ops/cards/void'] textarea[name=card_ids]", cardId);
    await admin.type("form[action='/ops/cards/void'] input[name=reason]", "console test: leaked");
    await submit(admin, "form[action='/ops/cards/void'] button[type=submit]");
    assert.match(await notice(admin), /Voided 1 of 1 matching cards/);
    assert.equal(origin.sql(`SELECT status FROM inventories WHERE id = ${cardId}`), "void");

    await go(admin, "/ops/audit?action=card.void");
    const audit = await admin.$$eval("#audit tbody tr", (trs) => trs.map((tr) => tr.textContent));
    assert.equal(audit.length, 1, audit.join("\n"));
    assert.match(audit[0], /Ana Admin/);
    assert.match(audit[0], new RegExp(`"card_ids":\\[${cardId}\\]`));
    assert.match(audit[0], /console test: leaked/);
    await shot(admin, "audit");
  });

  test("a POST without the CSRF token is refused, and nothing is voided", async () => {
    const cardId = origin.sql("SELECT id FROM inventories WHERE status = 'active' ORDER BY id LIMIT 1");
    for (const body of [`card_ids=${cardId}&reason=x`, `card_ids=${cardId}&reason=x&csrf=forged`]) {
      const res = await admin.evaluate(async (body) => {
        const r = await fetch("/ops/cards/void", {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body,
        });
        return { status: r.status, text: await r.text() };
      }, body);
      assert.equal(res.status, 403, body);
      assert.match(res.text, /security token is missing or out of date/);
    }
    assert.equal(origin.sql(`SELECT status FROM inventories WHERE id = ${cardId}`), "active");
  });

  test("a viewer sees no actions, and the server refuses them anyway", async () => {
    const viewer = await newPage();
    await signIn(viewer, viewerToken);
    await go(viewer, "/ops/cards");
    assert.equal(await viewer.$("form[action='/ops/cards/void']"), null, "no void form");
    await go(viewer, "/ops/imports");
    assert.equal(await viewer.$("#import-form"), null, "no upload form");
    await go(viewer, "/ops/jobs");
    assert.equal(await viewer.$("#jobs button"), null, "no job buttons");
    await go(viewer, "/ops/stock");
    assert.equal(await viewer.$("form[action='/ops/stock/threshold']"), null, "no threshold forms");

    const cardId = origin.sql("SELECT id FROM inventories WHERE status = 'active' ORDER BY id LIMIT 1");
    const res = await viewer.evaluate(async (cardId) => {
      const csrf = document.body.dataset.csrf;
      const r = await fetch("/ops/cards/void", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ csrf, card_ids: cardId, reason: "viewer tries" }),
      });
      return { status: r.status, text: await r.text() };
    }, cardId);
    assert.equal(res.status, 403);
    assert.match(res.text, /This needs the operator role; you are viewer\./);
    assert.equal(origin.sql(`SELECT status FROM inventories WHERE id = ${cardId}`), "active");
    await viewer.browserContext().close();
  });

  test("codes are masked; an admin reveals them after confirming, and it is audited", async () => {
    const res = await signedRequest(origin.url, {
      secret: origin.secret,
      authorization: `Bearer ${origin.key}`,
      idempotencyKey: `console-${randomHex()}`,
      body: allocationBody({ product_id: "gift-usd", denomination: "25.00", quantity: 2, client_reference: "order 7" }),
    });
    assert.equal(res.status, 201, res.text());
    const allocation = res.json();
    allocation.id = allocation.allocation_id;

    await go(admin, "/ops/cards");
    await admin.select("select[name=by]", "reference");
    await admin.type("input[name=q]", "order 7");
    await submit(admin, "form[role=search] button");
    const shown = await admin.$$eval("table.cards tbody code", (c) => c.map((e) => e.textContent));
    assert.ok(shown.length >= 2);
    for (const card of allocation.cards) assert.ok(!shown.includes(card.code), "codes are masked");
    assert.ok(shown.some((c) => c.startsWith("••••••")), shown.join(" "));

    await submit(admin, `a[href='/ops/allocations/${allocation.id}/reveal']`);
    await shot(admin, "reveal-confirm");
    await admin.click("input[name=confirm]");
    await submit(admin, "main form button.danger");
    const clear = await admin.$$eval("table.cards tbody code", (c) => c.map((e) => e.textContent));
    for (const card of allocation.cards) assert.ok(clear.includes(card.code), `${card.code} is revealed`);
    assert.equal(
      origin.sql(`SELECT count(*) FROM audit_log WHERE action = 'allocation.reveal' AND target = '${allocation.id}'`),
      "1",
    );
    await go(admin, `/ops/cards?by=reference&q=${encodeURIComponent("order 7")}`);
    await shot(admin, "cards");
    await go(admin, "/ops/stock");
    assert.match(await admin.$eval("svg.chart", (c) => c.getAttribute("aria-label")), /2 in all/);
    await shot(admin, "stock");
  });

  test("clients and keys: a new key is shown once, then revoked", async () => {
    await go(admin, "/ops/clients");
    await submit(admin, `a[href='/ops/clients/${origin.clientId}']`);
    await admin.type("form[action$='/keys'] input[name=label]", "console test");
    await submit(admin, "form[action$='/keys'] button");
    const key = await text(admin, "#new-key");
    assert.match(key, /^allot_eu_/);
    await shot(admin, "clients");
    await go(admin, `/ops/clients/${origin.clientId}`);
    assert.equal(await admin.$("#new-key"), null, "shown once");
    const keyId = keyIdOf(`Bearer ${key}`);
    await submit(admin, `form[action='/ops/keys/${keyId}/revoke'] button`);
    assert.match(await notice(admin), new RegExp(`Key ${keyId} is revoked\\.`));
    assert.equal(origin.sql(`SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = '${keyId}'`), "t");
  });

  test("jobs: pause, resume and run now", async () => {
    await go(admin, "/ops/jobs");
    await submit(admin, "tr[data-job='stock-watch'] form[action$='/pause'] button");
    assert.match(await notice(admin), /stock-watch is paused/);
    assert.match(await text(admin, "tr[data-job='stock-watch']"), /paused/);
    await shot(admin, "jobs");
    await submit(admin, "tr[data-job='stock-watch'] form[action$='/resume'] button");
    await submit(admin, "tr[data-job='reconcile'] form[action$='/run'] button");
    assert.match(await notice(admin), /reconcile is running now/);
    const actions = origin.sql("SELECT string_agg(action, ',' ORDER BY id) FROM audit_log WHERE action LIKE 'job.%'");
    assert.equal(actions, "job.pause,job.resume,job.run");
  });

  test("readable at phone width, and the keyboard reaches the content first", async () => {
    const phone = await newPage();
    await phone.setViewport({ width: 390, height: 844, isMobile: true });
    await signIn(phone, viewerToken);
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone (tables scroll inside their box)`);
    await shot(phone, "stock-phone");
    await phone.keyboard.press("Tab");
    assert.equal(await phone.evaluate(() => document.activeElement.textContent), "Skip to content");
    await phone.keyboard.press("Enter");
    await phone.waitForFunction(() => location.hash === "#main");
    await phone.browserContext().close();
  });

  test("sign-out ends the session", async () => {
    await go(admin, "/ops/audit");
    await submit(admin, "header .whoami button");
    assert.equal(new URL(admin.url()).pathname, "/ops/sign-in");
    await go(admin, "/ops/stock");
    assert.match(admin.url(), /\/ops\/sign-in\?next=/, "signed out");
  });

  test("no page broke the Content-Security-Policy or threw", () => {
    assert.deepEqual(problems, []);
  });
});
