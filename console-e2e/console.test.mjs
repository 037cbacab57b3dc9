// The operator story in a real browser: headless Debian Chromium driven by
// playwright-core against `asyncdev dev` (built by make test-browser), on
// its own ports and a fresh database. Screenshots of each page go to
// $ARTIFACTS (default ../artifacts/console).
//
//   ASYNCDEV=bin/asyncdev TEST_DATABASE_URL=postgres://... node --test console.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const here = path.dirname(new URL(import.meta.url).pathname);
const asyncdev = path.resolve(here, '..', process.env.ASYNCDEV || 'bin/asyncdev');
const artifacts = path.resolve(here, '..', process.env.ARTIFACTS || 'artifacts/console');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const basePort = Number(process.env.CONSOLE_E2E_PORT || 19805); // API; the next three for the rest
const server = process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const dbName = `console_e2e_${process.pid}`;
const databaseURL = server.replace(/\/[^/?]*(\?|$)/, `/${dbName}$1`);
const api = `http://localhost:${basePort}`;

let dev, browser, userDir, page, link, key;
let devLog = '';
const pageErrors = [];

// waitFor polls check (an async function returning a truthy value) for up
// to ms, so nothing depends on how fast this machine is.
async function waitFor(what, check, ms = 60_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function shot(name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

async function submit(input, extra = {}) {
  const res = await fetch(`${api}/models/example/production/async_predict`, {
    method: 'POST',
    headers: { Authorization: `Api-Key ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model_input: input, ...extra }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).request_id;
}

async function status(id) {
  const res = await fetch(`${api}/async_request/${id}`, { headers: { Authorization: `Api-Key ${key}` } });
  return (await res.json()).status;
}

// confirm clicks an action's button, checks that it asks first, and
// confirms.
async function confirm(button) {
  await page.click(button);
  await page.waitForSelector('#confirm');
  assert.match(await page.textContent('h1'), /Are you sure/);
  await page.click('#confirm');
  await page.waitForSelector('.flash');
}

before(async () => {
  fs.mkdirSync(artifacts, { recursive: true });
  dev = spawn(asyncdev, ['dev'], {
    env: {
      ...process.env,
      DATABASE_URL: databaseURL,
      API_PORT: String(basePort),
      PROCESSOR_PORT: String(basePort + 1),
      WEBHOOK_RECEIVER_PORT: String(basePort + 2),
      EXAMPLE_MODEL_PORT: String(basePort + 3),
      LOCALDEV_MODEL_CONCURRENCY: '2',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  dev.stdout.on('data', (d) => { devLog += d; });
  dev.stderr.on('data', (d) => { devLog += d; });
  try {
    await waitFor('asyncdev to print its banner', () => { if (dev.exitCode !== null) throw new Error(`asyncdev exited with ${dev.exitCode}`); return /asyncdev is ready/.test(devLog) && /API key\s+ak_/.test(devLog); }, 120_000);
  } catch (e) {
    throw new Error(`${e.message}; its output:\n${devLog.slice(-4000)}`);
  }
  link = devLog.match(/console\s+(http:\S+\/console\/signin\?token=\S+)/)[1];
  key = devLog.match(/API key\s+(ak_\S+)/)[1];
  userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'console-e2e-chromium-'));
  browser = await chromium.launchPersistentContext(userDir, {
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'], // the fresh --user-data-dir is userDir
    viewport: { width: 1280, height: 900 },
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on('pageerror', (e) => { pageErrors.push(String(e)); });
  // A Content-Security-Policy violation is logged as a console error.
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
});

after(async () => {
  await browser?.close();
  if (dev && dev.exitCode === null) {
    dev.kill('SIGTERM');
    await new Promise((r) => dev.once('exit', r));
  }
  if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
  try {
    execFileSync('psql', ['-q', server, '-c', `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`], { stdio: 'ignore' });
  } catch { /* best effort */ }
});

test('the operator story', async (t) => {
  await t.test('the printed link signs in', async () => {
    await page.goto(link);
    await shot('signin-link');
    await page.click('#signin');
    await page.waitForSelector('#dep-example-1');
    assert.match(await page.textContent('.top .who'), /manage/);
    // The key never appeared in a URL.
    assert.ok(!page.url().includes(key));
    await shot('overview');
  });

  let queuedLater;
  await t.test('a submitted request appears, and its timeline shows its life', async () => {
    const id = await submit({ prompt: 'hello <b>operator</b>', sleep_ms: 300 }, { webhook_endpoint: `http://localhost:${basePort + 2}/webhook` });
    await page.goto(`${api}/console/requests`);
    await page.waitForSelector(`a[href="/console/requests/${id}"]`);
    await page.click(`a[href="/console/requests/${id}"]`);
    await waitFor('the request to succeed', async () => {
      await page.reload();
      return (await page.textContent('#state')).trim() === 'SUCCEEDED' && (await page.$('.ev.webhook'));
    });
    const timeline = await page.textContent('.timeline');
    assert.match(timeline, /Submitted/);
    assert.match(timeline, /Finished/);
    assert.match(timeline, /Webhook to localhost/);
    assert.match(await page.textContent('#output'), /HELLO <B>OPERATOR<\/B>|"prompt"/i);
    await page.goto(`${api}/console/requests`);
    await shot('requests');
    await page.goto(`${api}/console/requests/${id}`);
    await shot('request');
    queuedLater = id;
  });

  await t.test('a failed request is retried until it succeeds', async () => {
    // The example model fails this request's first two attempts; with one
    // attempt allowed, it fails, and each retry is one more attempt.
    const id = await submit({ fail_attempts: 2 }, { inference_retry_config: { max_attempts: 1 } });
    await waitFor('the request to fail', async () => (await status(id)) === 'FAILED');
    await page.goto(`${api}/console/requests?state=FAILED`);
    await page.click(`a[href="/console/requests/${id}"]`);
    await shot('request-failed');
    for (let i = 0; i < 5; i++) {
      const state = (await page.textContent('#state')).trim();
      if (state === 'SUCCEEDED') break;
      if (state === 'FAILED') {
        await confirm('#retry');
      } else {
        await new Promise((r) => setTimeout(r, 300));
        await page.reload();
      }
      await waitFor('the retry to finish', async () => ['SUCCEEDED', 'FAILED'].includes(await status(id)));
      await page.reload();
    }
    assert.equal((await page.textContent('#state')).trim(), 'SUCCEEDED');
    assert.match(await page.textContent('.timeline'), /MODEL_UNAVAILABLE/);
    await shot('request-retried');
  });

  await t.test('a queued request is canceled', async () => {
    // Pause the deployment so the request stays queued.
    await page.goto(`${api}/console/`);
    await confirm('#pause-example-1');
    assert.match(await page.textContent('#dep-example-1'), /PAUSED/);
    await shot('overview-paused');
    const id = await submit('wait for me');
    await page.goto(`${api}/console/requests/${id}`);
    assert.equal((await page.textContent('#state')).trim(), 'QUEUED');
    await page.click('#cancel');
    await page.waitForSelector('#confirm');
    await shot('confirm-cancel');
    await page.click('#confirm');
    await page.waitForSelector('.flash');
    assert.equal((await page.textContent('#state')).trim(), 'CANCELED');
    assert.equal(await status(id), 'CANCELED');
  });

  await t.test('the deployment is resumed and runs again', async () => {
    const id = await submit('after the pause');
    // Some traffic for the charts: a spread of latencies and a few failures.
    for (let i = 0; i < 12; i++) await submit({ sleep_ms: 100 * i });
    for (let i = 0; i < 3; i++) await submit({ fail_status: 500 }, { inference_retry_config: { max_attempts: 1 } });
    await page.goto(`${api}/console/`);
    await confirm('#resume-example-1');
    assert.match(await page.textContent('#dep-example-1'), /RUNNING/);
    await waitFor('the request to run after resume', async () => (await status(id)) === 'SUCCEEDED');
    await waitFor('the queue to drain', async () => {
      await page.reload();
      return /^0$/.test((await page.textContent('#dep-example-1 .stat .n')).trim())
        && /^0/.test((await page.textContent('#dep-example-1 .stat:nth-child(2) .n')).trim());
    });
    await shot('overview-after');
    await page.goto(`${api}/console/requests`);
    await shot('requests');
    assert.ok(queuedLater);
  });

  await t.test('a key is made and revoked', async () => {
    await page.goto(`${api}/console/keys`);
    await page.fill('input[name=name]', 'e2e <temporary>');
    await page.selectOption('select[name=scope]', 'invoke');
    await page.click('#create-key');
    const newKey = (await page.textContent('#new-key')).trim();
    assert.match(newKey, /^ak_/);
    await shot('keys-created');
    // The new key works against the API, until it is revoked.
    const before = await fetch(`${api}/models/example/production/async_queue_status`, { headers: { Authorization: `Api-Key ${newKey}` } });
    assert.equal(before.status, 200);
    await page.goto(`${api}/console/keys`);
    const row = page.locator('tr', { hasText: 'e2e <temporary>' });
    await row.locator('button', { hasText: 'Revoke' }).click();
    await page.waitForSelector('#confirm');
    await page.click('#confirm');
    await page.waitForSelector('.flash');
    assert.equal(await page.locator('tr', { hasText: 'e2e <temporary>' }).count(), 0);
    const after = await fetch(`${api}/models/example/production/async_queue_status`, { headers: { Authorization: `Api-Key ${newKey}` } });
    assert.equal(after.status, 401);
    await shot('keys');
  });

  await t.test('the webhook secret is rotated', async () => {
    await page.goto(`${api}/console/secrets`);
    await page.click('#rotate');
    await page.waitForSelector('#confirm');
    await page.click('#confirm');
    await page.waitForSelector('#new-secret');
    assert.match(await page.textContent('#new-secret'), /^whsec_/);
    await shot('secrets');
  });

  await t.test('no page had an error or a blocked resource', () => {
    assert.deepEqual(pageErrors, []);
  });

  await t.test('sign out', async () => {
    await page.click('.who button');
    await page.waitForSelector('input[name=api_key]');
    await shot('signin');
    await page.goto(`${api}/console/`);
    assert.match(page.url(), /\/console\/signin/);
  });
});
