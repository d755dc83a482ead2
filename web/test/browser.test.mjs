// The demo page in a real (headless) browser: Debian's Chromium, driven by
// playwright-core. Two pages in two browser contexts (two profiles, so two
// client groups) of one user: a todo added in one appears in the other.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {execFileSync} from 'node:child_process';
import {existsSync, mkdirSync} from 'node:fs';
import {join} from 'node:path';
import {chromium} from 'playwright-core';
import {Sidecar, freePort, root, startStack} from './harness.mjs';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

// ensureChromium installs Debian's chromium when it is missing and we may
// (root); otherwise it fails with a clear message. It never skips.
function ensureChromium() {
  if (existsSync(executablePath)) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`${executablePath} is missing: install Debian's chromium package (apt-get install -y chromium) or set CHROMIUM`);
  }
  const apt = (...args) => execFileSync('apt-get', args, {stdio: 'inherit', env: {...process.env, DEBIAN_FRONTEND: 'noninteractive'}});
  try {
    apt('install', '-y', '--no-install-recommends', 'chromium');
  } catch {
    apt('update');
    apt('install', '-y', '--no-install-recommends', 'chromium');
  }
  if (!existsSync(executablePath)) throw new Error(`installing chromium did not provide ${executablePath}`);
}

test('demo page: a todo added in one browser appears in another after a pull', {timeout: 240000}, async (t) => {
  ensureChromium();
  const s = await startStack();
  t.after(() => s.close());
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  t.after(() => browser.close());
  const open = async () => {
    const ctx = await browser.newContext({viewport: {width: 720, height: 560}});
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(s.sidecar.url + '/?user=alice');
    await page.waitForSelector('#online.online', {timeout: 30000});
    return {page, errors};
  };
  const a = await open();
  const b = await open();

  for (const title of ['Buy milk', 'Write the sidecar docs', 'Ship it']) {
    await a.page.fill('#title', title);
    await a.page.press('#title', 'Enter');
  }
  await a.page.locator('li', {hasText: 'Buy milk'}).locator('input[type=checkbox]').check();
  // Wait until page A has synced everything (no pending mutations).
  await a.page.waitForFunction(async () => (await window.rep.experimentalPendingMutations()).length === 0, null, {timeout: 30000});
  await a.page.click('#sync');

  await b.page.click('#sync'); // pull now rather than wait for the interval
  await b.page.waitForSelector('li:has-text("Ship it")', {timeout: 30000});
  const titles = await b.page.locator('li .text').allTextContents();
  assert.deepEqual(titles, ['Buy milk', 'Write the sidecar docs', 'Ship it']);
  assert.equal(await b.page.locator('li.done .text').textContent(), 'Buy milk');
  await a.page.waitForSelector('#pending:has-text("0 pending")');

  const outDir = join(root, 'web/test-results');
  mkdirSync(outDir, {recursive: true});
  await a.page.screenshot({path: join(outDir, 'demo.png')});
  assert.deepEqual([...a.errors, ...b.errors], [], 'no page errors');
});

test('realtime in the browser: a todo added in one page appears in another on another replica, without Sync', {timeout: 240000}, async (t) => {
  ensureChromium();
  // Scope user: alice's writes poke alice's pages only (the demo API shares
  // nothing between users), so bob's page must not pull.
  const env = {SIDECAR_POKE_SCOPE: 'user'};
  const s = await startStack({sidecarEnv: env});
  const b = new Sidecar({upstream: s.api.url, schema: s.schema, port: await freePort(), adminPort: await freePort(), env});
  await b.start();
  t.after(async () => { await b.stop(); await s.close(); });
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  t.after(() => browser.close());
  const open = async (base, user) => {
    const ctx = await browser.newContext({viewport: {width: 720, height: 560}});
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    let pulls = 0;
    page.on('request', (r) => { if (r.url().endsWith('/replicache/pull')) pulls++; });
    await page.goto(`${base}/?user=${user}`);
    await page.waitForSelector('#online.online', {timeout: 30000});
    // The poke stream is open once the sidecar counts it.
    return {page, errors, pulls: () => pulls};
  };
  const a = await open(s.sidecar.url, 'alice');
  const other = await open(b.url, 'alice');
  const bob = await open(s.sidecar.url, 'bob');
  const subscribers = async (sc) => {
    const m = await (await fetch(sc.admin + '/metrics')).text();
    return Number(/^replicache_sidecar_poke_subscribers (\d+)/m.exec(m)?.[1] ?? 0);
  };
  for (const [sc, n] of [[s.sidecar, 2], [b, 1]]) {
    const deadline = Date.now() + 15000;
    while (await subscribers(sc) < n) {
      if (Date.now() > deadline) throw new Error('the pages did not open their poke streams');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const bobPulls = bob.pulls();
  const latencies = [];
  for (let i = 0; i < 5; i++) {
    const title = `Realtime ${i}`;
    await a.page.fill('#title', title);
    const t0 = Date.now();
    await a.page.press('#title', 'Enter');
    await other.page.waitForSelector(`li:has-text("${title}")`, {timeout: 10000});
    latencies.push(Date.now() - t0);
  }
  latencies.sort((x, y) => x - y);
  t.diagnostic(`a todo typed in page A appears in page B (other replica, no Sync, pull interval 60 s): median ${latencies[2]} ms, max ${latencies[4]} ms`);
  assert.ok(latencies[4] < 5000, `max ${latencies[4]} ms`);
  assert.equal(bob.pulls(), bobPulls, "bob's page was not poked by alice's writes");
  assert.deepEqual([...a.errors, ...other.errors, ...bob.errors], [], 'no page errors');
});
