// The dashboard in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core)
// against the coordinator tests/e2e/run.sh started and fed with a small fleet. Every page
// loads without a console error, its numbers equal the API's, the round chart has a point per
// closed round, a viewer sees no change buttons and the API refuses its promotion, an
// operator pauses, resumes and promotes from the page, logout clears the token; and all of it
// also works behind deploy/nginx and under a path prefix (run.sh starts nginx for both).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(k + ' is not set (tests/e2e/run.sh sets it)');
  return v;
};
const base = env('FL_E2E_URL');
const tokens = { admin: env('FL_E2E_ADMIN'), operator: env('FL_E2E_OPERATOR'), viewer: env('FL_E2E_VIEWER') };
const modelId = Number(env('FL_E2E_MODEL'));
const roundId = Number(env('FL_E2E_ROUND'));
const art = env('FL_E2E_ARTIFACTS');

async function api(tok, p, opts = {}) {
  const res = await fetch(base + '/admin/v1/' + p, {
    method: opts.method || 'GET',
    headers: { Authorization: 'Bearer ' + tok, 'Content-Type': 'application/json' },
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}
const get = async (p) => {
  const r = await api(tokens.admin, p);
  assert.equal(r.status, 200, p + ': ' + JSON.stringify(r.body));
  return r.body;
};

// Playwright gives the browser a new empty profile (user-data-dir) of its own.
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
// deploy/nginx's template in front of the coordinator, and the same upstream under /fleet/.
const lb = env('FL_E2E_LB');
const prefixed = env('FL_E2E_PREFIXED');
let failures = 0;

// A fresh browser context per session (its own sessionStorage), collecting console errors,
// uncaught exceptions and failed requests.
async function session(who, url) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('console', (m) => m.type() === 'error' && errors.push('console: ' + m.text()));
  page.on('pageerror', (e) => errors.push('exception: ' + e.message));
  page.on('requestfailed', (r) => errors.push('request failed: ' + r.url()));
  page.on('response', (r) => r.status() >= 400 && errors.push('HTTP ' + r.status() + ': ' + r.url()));
  await page.goto(url);
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#token', tokens[who]);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#page[data-ready="fleet"]');
  // whoami: the bootstrap token's name is "bootstrap", the others were named by run.sh.
  assert.equal(await page.textContent('#who'), (who === 'admin' ? 'bootstrap' : 'e2e ' + who) + ' (' + who + ')');
  const stored = await page.evaluate(() => sessionStorage.getItem('fl.admin_token'));
  assert.equal(stored, tokens[who]);
  assert.equal(await page.evaluate(() => document.cookie), '', 'no cookies');
  return { who, ctx, page, errors };
}

async function open(s, name, hash) {
  await s.page.evaluate((h) => (location.hash = h), hash || name);
  await s.page.waitForSelector('#page[data-ready="' + name + '"]');
  await s.page.screenshot({ path: path.join(art, s.who + '-' + (hash || name).replace(/[^a-z0-9]+/g, '-') + '.png'), fullPage: true });
}
const num = async (s, k) => Number((await s.page.textContent('[data-k="' + k + '"]')).trim());
const has = async (s, sel) => (await s.page.$(sel)) !== null;

async function check(name, fn) {
  try {
    await fn();
    console.log('ok   ' + name);
  } catch (e) {
    failures++;
    console.log('FAIL ' + name + ': ' + (e.stack || e));
  }
}
// Polls fn in the page from here until it is true. Not page.waitForFunction: once its first
// check is false it polls through an eval inside the page, which the page's CSP (no
// 'unsafe-eval') refuses, as it should (the check failed that way on a loaded CI machine).
async function until(page, fn, ms = 15000) {
  for (const t0 = Date.now(); !(await page.evaluate(fn)); ) {
    if (Date.now() - t0 > ms) throw new Error('timed out waiting for ' + fn);
    await new Promise((ok) => setTimeout(ok, 50));
  }
}
const noErrors = (s) => assert.deepEqual(s.errors, [], s.who + ': errors in the browser');

// ---- admin: every page, its numbers against the API -----------------------------------
const admin = await session('admin', base + '/ui/');
await check('fleet overview equals the API', async () => {
  const devices = (await get('devices')).devices;
  const rounds = (await get('rounds')).rounds;
  await open(admin, 'fleet');
  assert.equal(await num(admin, 'devices-total'), devices.length);
  assert.ok(devices.length >= 12);
  assert.equal(await num(admin, 'devices-active'), devices.filter((d) => d.state === 'active').length);
  assert.equal(await num(admin, 'rounds-open'), rounds.filter((r) => r.state === 'open').length);
  // run.sh left its round open (fl-sim's plan may have opened one more after its last round).
  const r0 = rounds.find((r) => r.round_id === roundId);
  assert.ok(r0 !== undefined && r0.state === 'open', 'run.sh left round ' + roundId + ' open');
  assert.equal((await admin.page.textContent('[data-k="round-' + r0.round_id + '-progress"]')).trim(),
    r0.accepted + ' / ' + r0.target);
  assert.equal(await num(admin, 'channel-stable'), devices.filter((d) => !(d.labels || {}).channel).length);
  // The fleet's refused uploads (its badly signed ones, when the draw picked a bad device),
  // counted by the coordinator's /metrics: every reason, the same number.
  const metrics = await (await fetch(base + '/metrics')).text();
  const reasons = [...metrics.matchAll(/^fl_updates_refused_total\{reason="([a-z_]+)"\} (\d+)$/gm)];
  assert.equal(await admin.page.$$eval('#refusals tbody tr', (r) => r.length), reasons.length);
  for (const [, reason, n] of reasons) assert.equal(await num(admin, 'refused-' + reason), Number(n));
  assert.ok(await admin.page.evaluate(() => Chart.getChart('refusals-chart') !== undefined));
});
await check('models page: versions, metrics and a chart point per round', async () => {
  const versions = (await get('models/' + modelId + '/versions')).versions;
  const closed = (await get('rounds?model_id=' + modelId)).rounds.filter((r) => r.state === 'closed');
  assert.equal(closed.length, 3, 'fl-sim ran 3 rounds');
  await open(admin, 'models', 'models?id=' + modelId);
  assert.equal(await num(admin, 'latest-version'), Math.max(...versions.map((v) => v.version)));
  for (const v of versions.filter((x) => x.round_id)) {
    assert.equal(await num(admin, 'participants-' + v.version), v.metrics.participants);
    assert.ok(Math.abs(await num(admin, 'loss-' + v.version) - v.metrics.mean_loss) < 1e-4);
  }
  await until(admin.page, () => typeof Chart !== 'undefined' && Chart.getChart('rounds-chart') !== undefined);
  const pts = await admin.page.evaluate(() => Chart.getChart('rounds-chart').data.datasets.map((d) => d.data.length));
  assert.deepEqual(pts.slice(0, 2), [closed.length, closed.length]);
  const signed = await admin.page.$$eval('#versions tbody tr', (rows) => rows.filter((r) => r.textContent.includes('signed (Ed25519)')).length);
  assert.equal(signed, versions.length);
});
await check('rollouts page shows the rollout and, for an admin, its buttons', async () => {
  const r = (await get('rollouts')).rollouts[0];
  await open(admin, 'rollouts');
  assert.equal((await admin.page.textContent('[data-k="rollout-state-' + r.rollout_id + '"]')).trim(), 'active');
  assert.equal(await num(admin, 'rollout-percent-' + r.rollout_id), r.percent);
  assert.ok(await has(admin, 'button[data-action="promote"]'));
});
await check('devices page: every device, the search filters', async () => {
  const devices = (await get('devices')).devices;
  await open(admin, 'devices');
  assert.equal(await admin.page.$$eval('#devices tbody tr', (r) => r.length), devices.length);
  const id = String(devices[1].device_id);
  await admin.page.fill('#device-search', 'firmware-that-does-not-exist');
  assert.equal(await num(admin, 'devices-shown'), 0);
  await admin.page.fill('#device-search', '');
  assert.equal(await num(admin, 'devices-shown'), devices.length);
  assert.ok(id.length > 0);
});
await check('audit page: entries and the action filter', async () => {
  const entries = (await get('audit')).entries;
  await open(admin, 'audit');
  assert.equal(await admin.page.$$eval('#audit tbody tr', (r) => r.length), entries.length);
  await admin.page.selectOption('#audit-action', 'token.create');
  assert.equal(await num(admin, 'audit-shown'), entries.filter((e) => e.action === 'token.create').length);
});
await check('admin: no errors in the browser', async () => noErrors(admin));
await check('logout clears the token', async () => {
  await admin.page.click('#logout');
  await admin.page.waitForSelector('#login:not([hidden])');
  assert.equal(await admin.page.evaluate(() => sessionStorage.getItem('fl.admin_token')), null);
  assert.ok(await admin.page.isHidden('#nav'));
  await admin.page.reload();
  await admin.page.waitForSelector('#login:not([hidden])');
  assert.equal(await admin.page.textContent('#page'), '');
});

// ---- viewer, under nginx's /fleet/ prefix: no buttons, and the API refuses anyway ----
const viewer = await session('viewer', prefixed);
await check('viewer (under /fleet/): every page loads, no change buttons', async () => {
  for (const p of ['fleet', 'models', 'rollouts', 'devices', 'audit']) await open(viewer, p);
  await open(viewer, 'rollouts');
  assert.equal(await viewer.page.$$eval('button[data-action]', (b) => b.length), 0);
  await open(viewer, 'devices');
  assert.equal(await viewer.page.$$eval('button[data-action]', (b) => b.length), 0);
  assert.ok(viewer.page.url().startsWith(prefixed));
  noErrors(viewer);
});
await check('viewer: the API refuses a promotion', async () => {
  const r = (await get('rollouts')).rollouts[0];
  const res = await api(tokens.viewer, 'rollouts/' + r.rollout_id + '/promote', { method: 'POST' });
  assert.equal(res.status, 403);
  assert.equal(res.body.error, 'forbidden');
  assert.equal((await get('rollouts/' + r.rollout_id)).state, 'active');
});

// ---- operator, through deploy/nginx: pause, resume, promote, revoke from the page ------
const operator = await session('operator', lb + '/ui/index.html');
await check('operator: pause, resume and promote from the rollouts page', async () => {
  const id = (await get('rollouts')).rollouts[0].rollout_id;
  const state = async () => (await get('rollouts/' + id)).state;
  const press = async (what, want) => {
    await open(operator, 'rollouts');
    await operator.page.click('button[data-action="' + what + '"]');
    // A selector, not waitForFunction with an argument: that evaluates a string, which the
    // page's CSP (no 'unsafe-eval') refuses, as it should.
    await operator.page.waitForSelector('#page[data-ready="rollouts"] [data-k="rollout-state-' + id + '"]:text-is("' + want + '")');
    assert.equal(await state(), want);
  };
  await press('pause', 'paused');
  await press('resume', 'active');
  await press('promote', 'promoted');
  const entries = (await get('audit')).entries;
  const mine = entries.find((e) => e.action === 'rollout.promote');
  assert.ok(mine && mine.actor.endsWith(':e2e operator'), 'the promotion is audited as the operator');
  await open(operator, 'rollouts', 'rollouts');
});
await check('operator: revoke a device (two clicks)', async () => {
  const dev = (await get('devices')).devices.find((d) => d.state === 'active');
  await open(operator, 'devices');
  const btn = '#devices tbody tr:has(td:first-child:text-is("' + dev.device_id + '")) button[data-action="revoke"]';
  await operator.page.click(btn);
  assert.equal((await get('devices')).devices.find((d) => d.device_id === dev.device_id).state, 'active');
  await operator.page.click(btn);
  await operator.page.waitForSelector('#page[data-ready="devices"]');
  await operator.page.waitForFunction(() => true);
  for (let i = 0; i < 50; i++) {
    if ((await get('devices')).devices.find((d) => d.device_id === dev.device_id).state === 'revoked') break;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.equal((await get('devices')).devices.find((d) => d.device_id === dev.device_id).state, 'revoked');
  noErrors(operator);
});

// ---- a wrong token is refused and not kept ---------------------------------------------
await check('a wrong token is refused and not kept', async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(base + '/ui/');
  await page.fill('#token', 'f'.repeat(64));
  await page.click('#login-form button[type=submit]');
  await until(page, () => document.getElementById('login-error').textContent !== '');
  assert.match(await page.textContent('#login-error'), /unknown token/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('fl.admin_token')), null);
  await ctx.close();
});

await browser.close();
console.log(failures ? failures + ' check(s) failed' : 'all checks passed');
process.exit(failures ? 1 : 0);
