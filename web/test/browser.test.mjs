// The demo page in a real (headless) browser: Debian's Chromium, driven by
// playwright-core. Two pages in two browser contexts (two profiles, so two
// client groups) of one user: a todo added in one appears in the other.
import {test} from 'node:test';
import assert from 'node:assert/strict';
import {execFileSync} from 'node:child_process';
import {existsSync, mkdirSync} from 'node:fs';
import {join} from 'node:path';
import {chromium} from 'playwright-core';
import {root, startStack, waitFor} from './harness.mjs';

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

// launch starts Chromium for one test.
async function launch(t) {
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  t.after(() => browser.close());
  return browser;
}

// untilPage waits until fn, run in page, resolves truthy. (page.waitForFunction
// does not await a promise its function returns: a promise is truthy, so
// an async condition there holds at once.)
function untilPage(page, what, fn) {
  return waitFor(what, () => page.evaluate(fn), {timeout: 30000, interval: 50});
}

// openPage opens the demo as user in a browser context of its own (its own
// client group), collecting console errors and warnings and counting pulls.
async function openPage(browser, base, user) {
  const ctx = await browser.newContext({viewport: {width: 520, height: 640}});
  const page = await ctx.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`); });
  let pulls = 0;
  page.on('request', (r) => { if (r.url().endsWith('/replicache/pull')) pulls++; });
  await page.goto(`${base}/?user=${user}`);
  await page.waitForSelector('#online.online', {timeout: 30000});
  // The page's first pull is over ("online" may show before its request
  // has left): a count of its pulls taken from here on has counted it.
  await untilPage(page, 'the page\'s first pull', () => window.rep.query((tx) => tx.has('me')));
  return {page, problems, pulls: () => pulls};
}

// pokeStreams reads how many poke streams a sidecar holds.
async function pokeStreams(sidecar) {
  const m = await (await fetch(sidecar.admin + '/metrics')).text();
  return Number(/^replicache_sidecar_poke_subscribers (\d+)/m.exec(m)?.[1] ?? 0);
}

async function waitStreams(sidecar, n) {
  const deadline = Date.now() + 15000;
  while (await pokeStreams(sidecar) < n) {
    if (Date.now() > deadline) throw new Error('the pages did not open their poke streams');
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// changeLag reads replicache_sidecar_change_lag_seconds of a sidecar: how
// many lags it observed, and their sum in seconds.
async function changeLag(sidecar) {
  const m = await (await fetch(sidecar.admin + '/metrics')).text();
  const read = (name) => Number(new RegExp(`^replicache_sidecar_change_lag_seconds_${name} (\\S+)`, 'm').exec(m)?.[1] ?? NaN);
  return {count: read('count'), sum: read('sum')};
}

test('the demo\'s first minute: no lost clicks, an honest "pending", the user shown, a clean console', {timeout: 240000}, async (t) => {
  ensureChromium();
  const s = await startStack();
  t.after(() => s.close());
  const browser = await launch(t);
  const a = await openPage(browser, s.sidecar.url, 'alice');
  const b = await openPage(browser, s.sidecar.url, 'alice');
  const bob = await openPage(browser, s.sidecar.url, 'bob');
  await waitStreams(s.sidecar, 3);
  assert.equal(await a.page.textContent('#user'), 'alice');
  assert.deepEqual(await bob.page.locator('#switch a').allTextContents(), ['alice', 'carol']);

  // A todo typed in page A appears in page B and stops being pending in A.
  // Each is typed after a quiet second: one caller's pokes go out at most
  // once per SIDECAR_POKE_CALLER_INTERVAL (1 s), the first of a quiet
  // second at once.
  const appear = [];
  const confirmed = [];
  for (let i = 0; i < 5; i++) {
    await sleep(1050);
    const title = `Todo ${i}`;
    await a.page.fill('#title', title);
    const t0 = Date.now();
    await a.page.press('#title', 'Enter');
    const inB = b.page.waitForSelector(`li:has-text("${title}")`, {timeout: 10000}).then(() => Date.now() - t0);
    const doneInA = a.page.waitForSelector(`li:not(.pending):has-text("${title}")`, {timeout: 10000}).then(() => Date.now() - t0);
    appear.push(await inB);
    confirmed.push(await doneInA);
  }
  const stats = (xs) => { const v = [...xs].sort((x, y) => x - y); return {median: v[2], max: v[4]}; };
  const ap = stats(appear);
  const co = stats(confirmed);
  t.diagnostic(`a new todo appears in the other page: median ${ap.median} ms, max ${ap.max} ms`);
  t.diagnostic(`it stops being pending in the page that typed it: median ${co.median} ms, max ${co.max} ms`);
  assert.ok(ap.max < 1000, `appears in the other page after ${ap.max} ms`);
  assert.ok(co.max < 1000, `pending for ${co.max} ms`);
  await a.page.waitForSelector('#pending:has-text("0 pending")');

  // 20 ordinary clicks (100 ms press, 400 ms apart) and one held for a
  // second, on one checkbox, while pokes and pulls keep re-rendering: all
  // register.
  const box = a.page.locator('li', {hasText: 'Todo 0'}).locator('input[type=checkbox]');
  const at = await box.boundingBox();
  const x = at.x + at.width / 2;
  const y = at.y + at.height / 2;
  await a.page.mouse.move(x, y);
  for (let i = 0; i < 20; i++) {
    await a.page.mouse.down();
    await sleep(100);
    await a.page.mouse.up();
    await sleep(400);
  }
  await a.page.mouse.down();
  await sleep(1000);
  await a.page.mouse.up();
  await untilPage(a.page, 'no pending mutations in page A', async () => (await window.rep.experimentalPendingMutations()).length === 0);
  // (The API's log lines arrive through a pipe: give the last one a moment.)
  const patches = () => s.api.effects().filter((e) => e.method === 'PATCH').length;
  await waitFor('21 updates in the API log', () => patches() >= 21, {timeout: 3000}).catch(() => {});
  assert.equal(patches(), 21, `${patches()} of 21 clicks reached the API`);
  assert.equal(await box.isChecked(), true, 'an odd number of clicks leaves it checked');
  await b.page.waitForSelector('li.done:has-text("Todo 0")', {timeout: 5000});

  // bob sees none of alice's todos.
  assert.equal(await bob.page.locator('#todos li').count(), 0);
  const outDir = join(root, 'web/test-results');
  mkdirSync(outDir, {recursive: true});
  // Both pages side by side (the README's picture: docs/demo.png).
  const shots = [await a.page.screenshot(), await b.page.screenshot()].map((png) => png.toString('base64'));
  const board = await (await browser.newContext({viewport: {width: 1064, height: 664}})).newPage();
  await board.setContent(`<body style="margin:0;background:#ddd;display:flex;gap:8px;padding:8px">${
    shots.map((b64) => `<img style="width:520px;box-shadow:0 1px 4px #0004" src="data:image/png;base64,${b64}">`).join('')}</body>`);
  await board.screenshot({path: join(outDir, 'demo.png')});
  assert.deepEqual([...a.problems, ...b.problems, ...bob.problems], [], 'no console errors or warnings');
});

test('realtime in the browser: a todo added in one page appears in another on another replica, without Sync', {timeout: 240000}, async (t) => {
  ensureChromium();
  // Scope user: alice's writes poke alice's pages only (the demo API shares
  // nothing between users), so bob's page must not pull.
  const env = {SIDECAR_POKE_SCOPE: 'user'};
  const s = await startStack({sidecarEnv: env});
  t.after(() => s.close());
  const b = await s.replica(env);
  const browser = await launch(t);
  const a = await openPage(browser, s.sidecar.url, 'alice');
  const other = await openPage(browser, b.url, 'alice');
  const bob = await openPage(browser, s.sidecar.url, 'bob');
  await waitStreams(s.sidecar, 2);
  await waitStreams(b, 1);
  const bobPulls = bob.pulls();
  const latencies = [];
  for (let i = 0; i < 5; i++) {
    await sleep(1050); // a quiet second: alice's pokes are paced
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
  // Replica B measured the lag of each change for page B (its stream names
  // its client group): one per change (the first may be forgotten, if it
  // came before B had answered that page's first pull since its stream
  // opened), and no lag longer than the page took to show the change.
  const lag = await changeLag(b);
  t.diagnostic(`replica B's change_lag_seconds: ${lag.count} observations, ${Math.round(1000 * lag.sum / lag.count)} ms on average`);
  assert.ok(lag.count >= 4 && lag.count <= 5, `replica B observed ${lag.count} lags for 5 changes`);
  assert.ok(lag.sum * 1000 <= latencies.reduce((x, y) => x + y, 0), `lags summing to ${lag.sum} s, the pages took ${latencies} ms`);
  assert.deepEqual([...a.problems, ...other.problems, ...bob.problems], [], 'no console errors or warnings');
});
