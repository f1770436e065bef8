// Keys from a JWKS: an HTTPS JWKS URL served by this test (its own CA and
// server certificate made with the `openssl` command line, trusted by
// Herald through --jwks-ca-file), key rotation without restart (a token
// with an unknown kid makes Herald fetch the document again, at most once a
// second; the periodic refresh drops removed keys), the last good keys kept
// while the URL is down, and a JWKS read from a file.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './lib/server.mjs';
import {
  startSecured, trySubscribe, assertStreamOpened, assertAuthError, sign, claims,
  keyPair, publicJwk, makeTlsFiles, startJwksServer, httpsGet, retryUntil,
} from './lib/auth.mjs';

const dir = mkdtempSync(join(tmpdir(), 'herald-jwks-'));
const servers = [];
const jwksServers = [];
let tls;
const keys = {};
const jwk = {};

before(async () => {
  tls = makeTlsFiles(dir);
  for (const [name, alg] of [['a', 'RS256'], ['b', 'ES256'], ['c', 'EdDSA'], ['f', 'EdDSA'], ['g', 'ES256']]) {
    keys[name] = await keyPair(dir, name, alg);
    jwk[name] = await publicJwk(keys[name], `key-${name}`);
  }
});
after(async () => {
  for (const s of servers) await s.stop();
  for (const j of jwksServers) await j.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A token signed with key `name`, with its kid (or `kid`). */
const tokenOf = (name, kid = `key-${name}`) => sign(keys[name].privateKey, keys[name].alg, claims('7777'), { kid });

async function jwksServer(doc) {
  const j = await startJwksServer(tls, doc);
  jwksServers.push(j);
  // The test's own HTTPS server answers with this CA (a check of the fixture, not of Herald).
  const r = await httpsGet(j.url, tls.ca);
  assert.equal(r.status, 200, `the test JWKS server answers: ${r.status} ${r.body}`);
  j.hits = 0;
  return j;
}

const opensNow = async (url, token) => (await trySubscribe(url, '', { token })).status === 200;

describe('JWKS over HTTPS', () => {
  test('rotation without restart, removed keys dropped, last good keys kept while the URL is down', { timeout: 40_000 }, async () => {
    const jwks = await jwksServer({ keys: [jwk.a] });
    const s = await startSecured([
      '--jwks', jwks.url, '--jwks-ca-file', tls.caFile, '--jwks-refresh-secs', '1',
      '--jwt-leeway-secs', '0', '--heartbeat-secs', '300',
    ]);
    servers.push(s);

    // kid A is in the document.
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('a') }), 'kid key-a, JWKS {a}');
    assert.ok(jwks.hits >= 1, 'Herald fetched the JWKS over HTTPS');

    // kid B is not: refused, naming the kid problem.
    assertAuthError(await trySubscribe(s.url, '', { token: await tokenOf('b') }), 'token_invalid', 'kid key-b, JWKS {a}',
      { message: /kid/i });

    // The document now holds only B: a B token works without a restart.
    jwks.setDoc({ keys: [jwk.b] });
    const tB = await tokenOf('b');
    const rB = await retryUntil(() => trySubscribe(s.url, '', { token: tB }), (r) => r.status === 200, { timeoutMs: 5_000, intervalMs: 200 });
    assertStreamOpened(rB, 'kid key-b after the JWKS switched to {b} (within 5 s)');

    // After the next refresh, A is gone.
    const tA = await tokenOf('a');
    const rA = await retryUntil(() => trySubscribe(s.url, '', { token: tA }), (r) => r.status !== 200, { timeoutMs: 5_000, intervalMs: 200 });
    assertAuthError(rA, 'token_invalid', 'kid key-a after the JWKS dropped it (within 5 s)', { message: /kid/i });

    // The JWKS server goes away: failed refreshes keep the last good keys.
    const hitsBeforeStop = jwks.hits;
    await jwks.stop();
    await sleep(3_000); // three refresh periods, each failing
    assert.equal(s.exited(), null, `herald still runs while the JWKS URL is down\n${s.output()}`);
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('b') }), 'kid key-b while the JWKS URL is down');
    assertAuthError(await trySubscribe(s.url, '', { token: await tokenOf('a') }), 'token_invalid',
      'kid key-a while the JWKS URL is down', { message: /kid/i });
    assert.ok(hitsBeforeStop >= 2, `the JWKS was fetched again after the switch (hits ${hitsBeforeStop})`);
  });

  test('an unknown kid makes Herald fetch the JWKS at once, at most once a second', { timeout: 20_000 }, async () => {
    const jwks = await jwksServer({ keys: [jwk.a] });
    const s = await startSecured([
      '--jwks', jwks.url, '--jwks-ca-file', tls.caFile, '--jwks-refresh-secs', '300', '--heartbeat-secs', '300',
    ]);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('a') }), 'kid key-a');
    await sleep(1_200); // past the once-a-second limit of the fetch at start

    // A new key appears in the document; the periodic refresh is 300 s away.
    jwks.setDoc({ keys: [jwk.a, jwk.c] });
    const before = jwks.hits;
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('c') }),
      'kid key-c, added to the JWKS after start: the first request with it succeeds');
    assert.ok(jwks.hits > before, 'the unknown kid made Herald fetch the JWKS');

    // A burst of tokens with unknown kids does not make a burst of fetches.
    const start = Date.now();
    const burstBefore = jwks.hits;
    for (let i = 0; i < 10; i++) {
      const r = await trySubscribe(s.url, '', { token: await tokenOf('g', `unknown-${i}-${Math.random()}`) });
      assertAuthError(r, 'token_invalid', `unknown kid #${i}`, { message: /kid/i });
    }
    const elapsed = Date.now() - start;
    const fetches = jwks.hits - burstBefore;
    const allowed = Math.ceil(elapsed / 1000) + 1;
    assert.ok(fetches <= allowed, `${fetches} JWKS fetches for 10 unknown kids in ${elapsed} ms (at most ${allowed})`);
    // Known keys keep working all along.
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('a') }), 'kid key-a after the burst');
  });
});

describe('JWKS from a file', () => {
  test('keys of a local JWKS file verify tokens; an unknown kid is refused', { timeout: 15_000 }, async () => {
    const file = join(dir, 'jwks.json');
    writeFileSync(file, JSON.stringify({ keys: [jwk.f, jwk.a] }));
    const s = await startSecured(['--jwks', file, '--heartbeat-secs', '300']);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('f') }), 'EdDSA kid key-f from the file');
    assertStreamOpened(await trySubscribe(s.url, '', { token: await tokenOf('a') }), 'RS256 kid key-a from the file');
    assertAuthError(await trySubscribe(s.url, '', { token: await tokenOf('b') }), 'token_invalid', 'kid key-b, not in the file',
      { message: /kid/i });
    // The right kid but another key: the signature does not verify.
    const forged = await sign(keys.c.privateKey, 'EdDSA', claims('7777'), { kid: 'key-f' });
    assertAuthError(await trySubscribe(s.url, '', { token: forged }), 'token_invalid', 'kid key-f signed by another key',
      { message: /signature/i });
  });
});
