// deploy/Caddyfile: Debian's Caddy runs it in front of the real Herald (on
// free ports, with its data in a temporary directory). Checked: `caddy
// validate` accepts the file as it is; events go through with no buffering
// delay; a client that reconnects through Caddy with Last-Event-ID gets what
// it missed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  DEPLOY_DIR, replaceOnce, layOutCaddy, caddyValidate, startCaddy, timeEventsThroughProxy, checkResumeThroughProxy, median, noCaddy,
} from './lib/proxy.mjs';
import { startHerald } from './lib/server.mjs';

let herald;
let caddy;

before(async () => {
  if (noCaddy) return;
  herald = await startHerald(['--retry-ms', '2000']);
  caddy = await startCaddy(await layOutCaddy(herald.url));
});

after(async () => {
  await caddy?.stop();
  await herald?.stop();
});

test('caddy validate accepts deploy/Caddyfile as it is, and refuses a broken one', { skip: noCaddy }, async () => {
  const layout = await layOutCaddy('http://127.0.0.1:8080');
  try {
    const good = caddyValidate(join(DEPLOY_DIR, 'Caddyfile'), layout.env);
    assert.equal(good.status, 0, good.output);
    assert.match(good.output, /Valid configuration/);
    const broken = join(layout.dir, 'Broken');
    writeFileSync(broken, replaceOnce(readFileSync(join(DEPLOY_DIR, 'Caddyfile'), 'utf8'), '\t\tflush_interval -1', '\t\tflush_intervall -1', 'deploy/Caddyfile'));
    const bad = caddyValidate(broken, layout.env);
    assert.notEqual(bad.status, 0, bad.output);
    assert.match(bad.output, /flush_intervall/);
  } finally {
    rmSync(layout.dir, { recursive: true, force: true });
  }
});

test('events go through Caddy with no buffering delay', { skip: noCaddy }, async () => {
  const { status, contentType, latenciesMs } = await timeEventsThroughProxy(caddy.url, { user: 'caddy-latency' });
  assert.equal(status, 200);
  assert.match(contentType, /^text\/event-stream/);
  const shown = latenciesMs.map((ms) => ms.toFixed(1)).join(', ');
  // The same bound as through nginx: the median of five within 100 ms.
  assert.ok(median(latenciesMs) <= 100, `publish-to-client through Caddy, ms: ${shown}`);
  console.log(`# publish-to-client through Caddy, ms: ${shown}`);
});

test('a resume through Caddy with Last-Event-ID gets exactly what was missed', { skip: noCaddy }, async () => {
  await checkResumeThroughProxy(caddy.url, herald.url, 'caddy');
});
