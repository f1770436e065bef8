// deploy/nginx: Debian's nginx runs deploy/nginx/herald.conf with
// deploy/nginx/sse-proxy.conf included, in front of the real Herald (both
// on free ports, nginx in a temporary prefix). Checked: `nginx -t` accepts
// the files; events go through with no buffering delay; a client that
// reconnects through the proxy with Last-Event-ID gets what it missed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  DEPLOY_DIR, layOutNginx, nginxTest, startNginx, timeEventsThroughProxy, checkResumeThroughProxy, median, noNginx,
} from './lib/proxy.mjs';
import { startHerald } from './lib/server.mjs';

let herald;
let nginx;

before(async () => {
  if (noNginx) return;
  // A long retry, so a reconnecting client is surely away when the test
  // publishes what it must get back through the resume.
  herald = await startHerald(['--retry-ms', '2000']);
  nginx = await startNginx(await layOutNginx(herald.url));
});

after(async () => {
  await nginx?.stop();
  await herald?.stop();
});

test('nginx -t accepts the server block with the snippet included', { skip: noNginx }, async () => {
  const layout = await layOutNginx('http://127.0.0.1:8080');
  const { status, output } = nginxTest(layout);
  rmSync(layout.dir, { recursive: true, force: true });
  assert.equal(status, 0, output);
  assert.match(output, /syntax is ok/);
  assert.match(output, /test is successful/);
  assert.doesNotMatch(output, /\[warn\]|\[emerg\]/, output);
  // The snippet is what makes a stream a stream: each of these is checked
  // by the streaming test below only as far as this nginx build and Herald's
  // own X-Accel-Buffering header let it show, so they are required here.
  const snippet = readFileSync(join(DEPLOY_DIR, 'nginx', 'sse-proxy.conf'), 'utf8');
  for (const line of ['proxy_http_version 1.1;', 'proxy_set_header Connection "";', 'proxy_buffering off;', 'gzip off;', 'proxy_read_timeout 1h;']) {
    assert.ok(snippet.split('\n').includes(line), `sse-proxy.conf sets ${line}`);
  }
});

test('nginx -t refuses a snippet nginx cannot read (the check is real)', { skip: noNginx }, async () => {
  const layout = await layOutNginx('http://127.0.0.1:8080', { snippet: 'proxy_buffering sometimes;\n' });
  const { status, output } = nginxTest(layout);
  rmSync(layout.dir, { recursive: true, force: true });
  assert.notEqual(status, 0, output);
  assert.match(output, /proxy_buffering/);
});

test('events go through nginx with no buffering delay', { skip: noNginx }, async () => {
  const { status, contentType, latenciesMs } = await timeEventsThroughProxy(nginx.url, { user: 'nginx-latency' });
  assert.equal(status, 200);
  assert.match(contentType, /^text\/event-stream/);
  const shown = latenciesMs.map((ms) => ms.toFixed(1)).join(', ');
  // The bound the README promises: an event is on the client within 100 ms of its
  // publish. The median of five, so one stall of this shared machine does
  // not fail it; a buffering proxy holds every one of them.
  assert.ok(median(latenciesMs) <= 100, `publish-to-client through nginx, ms: ${shown}`);
  console.log(`# publish-to-client through nginx, ms: ${shown}`);
});

test('a resume through nginx with Last-Event-ID gets exactly what was missed', { skip: noNginx }, async () => {
  await checkResumeThroughProxy(nginx.url, herald.url, 'nginx');
});
