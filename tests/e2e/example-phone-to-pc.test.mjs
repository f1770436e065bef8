// examples/phone-to-pc, started with its README's command against Herald in
// token mode: the PC page's QR code decodes (ZBar) to its upload link; a
// phone-sized page opens the link and uploads a PNG; the PC page shows the
// image (loaded, natural size that of the PNG) from the URL the event
// carried. Bad uploads get JSON errors.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from './lib/server.mjs';
import { launchChromium, noChromium } from './lib/browser.mjs';
import { startExampleHerald, startExample, screenshot, ARTIFACTS_DIR } from './lib/examples.mjs';

const ZBARIMG = '/usr/bin/zbarimg';
const noZbar = !existsSync(ZBARIMG) && 'no /usr/bin/zbarimg (Debian zbar-tools)';

let herald;
let example;
let chromium;

before(async () => {
  herald = await startExampleHerald();
  // The phone reaches the backend on loopback here.
  example = await startExample('phone-to-pc', { env: { ...herald.env, PUBLIC_HOST: '127.0.0.1' } });
  if (!noChromium) chromium = await launchChromium();
});

after(async () => {
  await chromium?.close();
  await example?.stop();
  await herald?.stop();
});

/** What ZBar reads in a PNG file (the first symbol's data). */
function decodeQr(path) {
  return execFileSync(ZBARIMG, ['-q', '--raw', path], { timeout: 20_000, stdio: ['ignore', 'pipe', 'ignore'] })
    .toString('utf8').replace(/\n$/, '');
}

async function openPc() {
  const pc = await chromium.browser.newPage();
  await pc.goto(example.url + '/');
  await pc.waitForFunction(() => document.querySelector('#state').dataset.state === 'open', null, { timeout: 15_000 });
  return pc;
}

const pngSize = (png) => ({ width: png.readUInt32BE(16), height: png.readUInt32BE(20) });

test('the PC page QR code decodes to its upload link', { timeout: 60_000, skip: noChromium || noZbar }, async () => {
  const pc = await openPc();
  const link = await pc.getAttribute('#upload-link', 'href');
  assert.match(link, new RegExp(`^http://127\\.0\\.0\\.1:${example.port}/upload/[0-9a-f]{32}$`));
  const path = join(ARTIFACTS_DIR, 'example-phone-to-pc-qr.png');
  await screenshot(pc, 'example-phone-to-pc-qr-page');
  await pc.locator('#qr').screenshot({ path });
  assert.equal(decodeQr(path), link);

  // Other lengths, so other QR versions (with version fields from 7 on) and
  // a non-ASCII link: each decodes to exactly what was encoded.
  for (const length of [1, 30, 90, 160, 400]) {
    const text = `${link}?n=${'x'.repeat(length)}&é=ü`;
    const version = await pc.evaluate((t) => {
      const code = QR.encode(t);
      QR.draw(document.querySelector('#qr'), code, { scale: 4, margin: 4 });
      return code.version;
    }, text);
    await pc.locator('#qr').screenshot({ path });
    assert.equal(decodeQr(path), text, `version ${version}`);
  }
  await pc.close();
});

test('a photo uploaded from the phone appears on the PC page through an event carrying its URL', { timeout: 60_000, skip: noChromium }, async () => {
  const pc = await openPc();
  const link = await pc.getAttribute('#upload-link', 'href');

  // A real PNG to upload: a screenshot of the PC page's QR code.
  const png = await pc.locator('#qr').screenshot();
  const { width, height } = pngSize(png);
  assert.ok(width > 0 && height > 0);

  const phone = await chromium.browser.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(link);
  await phone.setInputFiles('#file', { name: 'snapshot.png', mimeType: 'image/png', buffer: png });
  await phone.waitForFunction(() => document.querySelector('#status').dataset.state === 'sent', null, { timeout: 15_000 });
  await screenshot(phone, 'example-phone-to-pc-phone');

  await pc.waitForFunction(() => {
    const img = document.querySelector('#photos img');
    return img && img.complete && img.naturalWidth > 0;
  }, null, { timeout: 15_000 });
  const shown = await pc.evaluate(() => {
    const img = document.querySelector('#photos img');
    return { count: document.querySelectorAll('#photos img').length, src: img.getAttribute('src'), w: img.naturalWidth, h: img.naturalHeight, alt: img.alt };
  });
  assert.equal(shown.count, 1);
  assert.match(shown.src, /^\/photos\/[0-9a-f]{32}$/);
  assert.deepEqual({ w: shown.w, h: shown.h }, { w: width, h: height }, 'the image shown is the one uploaded');
  assert.equal(shown.alt, 'snapshot.png');
  const served = await fetch(example.url + shown.src);
  assert.equal(served.headers.get('content-type'), 'image/png');
  assert.ok(Buffer.from(await served.arrayBuffer()).equals(png), 'the bytes served are the bytes uploaded');
  await screenshot(pc, 'example-phone-to-pc-pc-with-photo');

  // Bad uploads: clear JSON errors, and nothing reaches the PC page.
  const session = link.split('/').pop();
  const upload = (headers, body, s = session) => request(example.url, `/api/upload/${s}`, { method: 'POST', headers, body });
  let r = await upload({ 'content-type': 'text/plain' }, 'hello');
  assert.equal(r.status, 415);
  assert.equal(r.json.error.code, 'not_an_image');
  r = await upload({ 'content-type': 'image/png' }, 'not really a png');
  assert.equal(r.status, 415);
  assert.match(r.json.error.message, /not a image\/png image/);
  r = await upload({ 'content-type': 'image/png' }, png, 'f'.repeat(32));
  assert.equal(r.status, 404);
  assert.equal(r.json.error.code, 'unknown_session');
  assert.equal((await request(example.url, '/upload/nope')).status, 404);
  await phone.setInputFiles('#file', { name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('plain text') });
  await phone.waitForFunction(() => document.querySelector('#status').dataset.state === 'error', null, { timeout: 15_000 });
  assert.match(await phone.textContent('#status'), /not a image\/png image/);
  assert.equal(await pc.evaluate(() => document.querySelectorAll('#photos img').length), 1);
  await phone.close();
  await pc.close();
});
