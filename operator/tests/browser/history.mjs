// Drives the history page in Debian's headless Chromium (playwright-core, system browser).
// Run by operator/tests/it/browser.rs, which seeds the data and passes it in the environment:
//   MAILTRAIL_URL         the operator's base URL
//   MAILTRAIL_KEY         an API key to sign in with
//   KEY_NAME              that key's name (shown once signed in)
//   RECIPIENT             the address to search for
//   EXPECT_RESULTS        how many emails the search must list
//   EMAIL_ID              an email whose timeline is checked
//   EXPECT_TIMELINE       its event types in order, comma-separated
//   CLICKED_URL           the https URL its `clicked` event carries (must be a link)
//   USER_AGENT            the user agent its `opened` event carries (must be shown)
//   HOSTILE_ID            the email whose subject, user agent and URL carry payloads
//   HOSTILE_SUBJECT       its subject, which must be shown as text
//   IN_FLIGHT_ID          an email still in flight (the page must refresh it)
//   ARTIFACTS             a directory for screenshots
//   CHROMIUM              the browser (default /usr/bin/chromium)
// Protocol with the Rust test for the refresh check: this script prints `IN_FLIGHT_SHOWN` once
// the in-flight email is on screen, then waits for a line on stdin (the test records
// `delivered` meanwhile) and expects the page to show it without a reload.
// Exits 0 when every check holds; otherwise prints what failed and exits 1.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set (see the top of history.mjs)`);
  return value;
};
const base = env('MAILTRAIL_URL');
const artifacts = env('ARTIFACTS');
mkdirSync(artifacts, { recursive: true });
const step = (what) => console.error(`browser: ${what}`);

// The flags Chromium needs on a machine without a network or a sandbox (running as root);
// playwright gives it a fresh, empty profile.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
context.setDefaultTimeout(15000);
const page = await context.newPage();
const dialogs = [];
const pageErrors = [];
const cspViolations = [];
page.on('dialog', (dialog) => { dialogs.push(dialog.message()); dialog.dismiss().catch(() => {}); });
page.on('pageerror', (error) => pageErrors.push(String(error)));
page.on('console', (message) => {
  if (message.type() === 'error' && /Content Security Policy/i.test(message.text())) cspViolations.push(message.text());
});

async function timelineTypes() {
  return page.$$eval('#timeline > li', (items) => items.map((item) => item.dataset.type));
}

try {
  step('sign in');
  await page.goto(base);
  await page.locator('#sign-in-view').waitFor({ state: 'visible' });
  await page.fill('#key', 'mtk_000000000000_wrongwrongwrongwrongwrongwrongwrongwrongwrong');
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#sign-in-error').filter({ hasText: 'not accepted' }).waitFor();
  await page.fill('#key', env('MAILTRAIL_KEY'));
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#search-view').waitFor({ state: 'visible' });
  assert.match(await page.textContent('#who-text'), new RegExp(env('KEY_NAME')));
  // The key is kept nowhere the page's script (or an injected one) could read it.
  const kept = await page.evaluate(() => JSON.stringify({
    local: { ...localStorage }, session: { ...sessionStorage }, cookie: document.cookie,
    field: document.getElementById('key').value,
  }));
  assert.ok(!kept.includes(process.env.MAILTRAIL_KEY), `the key is kept by the page: ${kept}`);
  assert.ok(!kept.includes('mailtrail_session'), `the session cookie is readable by script: ${kept}`);

  step('search a recipient');
  await page.fill('#q', env('RECIPIENT'));
  await page.click('#search-form button[type=submit]');
  await page.locator('#results tbody tr').first().waitFor();
  const rows = await page.$$eval('#results tbody tr', (trs) => trs.map((tr) => ({
    id: tr.dataset.id, recipient: tr.cells[1].textContent, status: tr.cells[4].textContent,
  })));
  assert.equal(rows.length, Number(env('EXPECT_RESULTS')), `results: ${JSON.stringify(rows)}`);
  for (const row of rows) assert.equal(row.recipient, env('RECIPIENT'));
  assert.ok(rows.some((row) => row.id === env('EMAIL_ID')), 'the email is listed');

  step('open an email and check its timeline');
  await page.click(`#results tbody tr[data-id="${env('EMAIL_ID')}"] a`);
  await page.locator(`#message-view[data-id="${env('EMAIL_ID')}"] #timeline > li`).first().waitFor();
  assert.deepEqual(await timelineTypes(), env('EXPECT_TIMELINE').split(','));
  const clicked = page.locator('#timeline > li[data-type="clicked"] a.external');
  assert.equal(await clicked.getAttribute('href'), env('CLICKED_URL'));
  assert.equal(await clicked.getAttribute('target'), '_blank');
  assert.match(await clicked.getAttribute('rel'), /noopener/);
  assert.match(await clicked.getAttribute('rel'), /external/);
  const opened = await page.textContent('#timeline > li[data-type="opened"]');
  assert.ok(opened.includes(env('USER_AGENT')), `user agent shown: ${opened}`);
  assert.equal(await page.isVisible('#refreshing'), false, 'a settled email is not refreshed');
  await page.screenshot({ path: join(artifacts, 'history-timeline.png'), fullPage: true });

  step('stored XSS: payloads in the subject, a user agent, a clicked URL, a bounce diagnostic');
  await page.goto(`${base}/#/messages/${env('HOSTILE_ID')}`);
  await page.locator(`#message-view[data-id="${env('HOSTILE_ID')}"] #timeline > li[data-type="clicked"]`).waitFor();
  assert.equal(await page.textContent('#message-subject'), env('HOSTILE_SUBJECT'));
  const hostile = await page.evaluate(() => ({
    pwned: window.__pwned,
    scripts: [...document.scripts].map((s) => s.src),
    images: document.images.length,
    javascriptLinks: document.querySelectorAll('a[href^="javascript:" i], [href*="javascript:" i]').length,
    handlers: [...document.querySelectorAll('*')].filter((el) => [...el.attributes].some((a) => /^on/i.test(a.name))).length,
    svg: document.querySelectorAll('svg, iframe, object, embed').length,
    links: [...document.querySelectorAll('#timeline a')].map((a) => a.href),
  }));
  assert.equal(hostile.pwned, undefined, 'an injected script ran');
  assert.deepEqual(hostile.scripts, [`${base}/assets/history.js`]);
  assert.equal(hostile.images, 0, 'an injected element was created');
  assert.equal(hostile.javascriptLinks, 0, 'a javascript: URL became a link');
  assert.equal(hostile.handlers, 0, 'an element carries an inline event handler');
  assert.equal(hostile.svg, 0, 'an injected element was created');
  assert.deepEqual(hostile.links, [], 'only http(s) URLs are links');
  const hostileText = await page.textContent('#timeline');
  assert.ok(hostileText.includes('javascript:'), 'the javascript: URL is shown as text');
  assert.ok(hostileText.includes('<img'), 'the user agent is shown as text');
  await page.screenshot({ path: join(artifacts, 'history-hostile.png'), fullPage: true });

  step('an email in flight refreshes by itself');
  await page.goto(`${base}/#/messages/${env('IN_FLIGHT_ID')}`);
  await page.locator(`#message-view[data-id="${env('IN_FLIGHT_ID')}"] #timeline > li`).first().waitFor();
  await page.locator('#refreshing').waitFor({ state: 'visible' });
  const before = await timelineTypes();
  assert.ok(!before.includes('delivered'), `already delivered: ${before}`);
  console.log('IN_FLIGHT_SHOWN');
  await new Promise((resolve) => createInterface({ input: process.stdin }).once('line', resolve));
  await page.locator('#timeline > li[data-type="delivered"]').waitFor({ timeout: 20000 });
  await page.locator('#refreshing').waitFor({ state: 'hidden' });
  assert.match(await page.textContent('#message-status'), /delivered/);

  step('sign out');
  await page.click('#sign-out');
  await page.locator('#sign-in-view').waitFor({ state: 'visible' });
  const after = await page.evaluate(async () => (await fetch('/v1/session')).status);
  assert.equal(after, 401, 'the session still works after sign-out');

  assert.deepEqual(dialogs, [], 'a dialog was opened');
  assert.deepEqual(pageErrors, [], 'the page threw');
  assert.deepEqual(cspViolations, [], 'the page broke its own CSP');
  step('all checks passed');
  await browser.close();
} catch (error) {
  console.error(`browser: FAILED: ${error.stack || error}`);
  await page.screenshot({ path: join(artifacts, 'history-failure.png'), fullPage: true }).catch(() => {});
  await browser.close().catch(() => {});
  process.exit(1);
}
