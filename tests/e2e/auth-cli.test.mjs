// Secure by default and `herald token`: `herald serve` without --dev and
// without any key refuses to start (exit 64, naming the options); the
// secret may come from HERALD_JWT_SECRET; `herald token` prints a JWT that
// the server accepts and that npm `jose` verifies (claims, ttl, algorithm
// from the key, kid, audience and issuer from the config file).

import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { publish, request } from './lib/server.mjs';
import {
  startSecured, runHerald, trySubscribe, assertStreamOpened, assertAuthError, sign, claims, nowSecs,
  keyPair, decodeToken, bearer, jose,
} from './lib/auth.mjs';

const SECRET = 'cli-secret-of-the-auth-tests-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'herald-authcli-'));
const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** `herald token ...args`: asserts exit 0 and one JWT on stdout; returns it. */
async function mintWithCli(args, env = {}) {
  const r = await runHerald(['token', ...args], { env });
  assert.equal(r.code, 0, `herald token ${args.join(' ')} exited ${r.code}\n${r.stderr}`);
  const out = r.stdout.trim();
  assert.match(out, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, `stdout is one JWT: ${JSON.stringify(r.stdout)}`);
  return out;
}

describe('secure by default', () => {
  test('herald serve with neither --dev nor a key exits 64 naming the options', { timeout: 20_000 }, async () => {
    const r = await runHerald(['serve', '--memory', '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 64, `exit code; stderr: ${r.stderr}`);
    for (const name of ['jwt_secret', 'jwt_public_key', 'jwks', 'api_keys', '--dev']) {
      assert.ok(r.stderr.includes(name), `stderr names ${name}: ${r.stderr}`);
    }
    assert.doesNotMatch(r.stdout, /herald listening/, 'it never listened');
  });

  test('a --jwt-public-key file that does not exist exits 64 naming the option', { timeout: 20_000 }, async () => {
    const missing = join(dir, 'no-such-key.pem');
    const r = await runHerald(['serve', '--memory', '--listen', '127.0.0.1:0', '--jwt-public-key', missing]);
    assert.equal(r.code, 64, `exit code; stderr: ${r.stderr}`);
    assert.match(r.stderr, /jwt_public_key/, r.stderr);
  });

  test('the secret may come from HERALD_JWT_SECRET', { timeout: 20_000 }, async () => {
    const s = await startSecured(['--heartbeat-secs', '300'], { env: { HERALD_JWT_SECRET: SECRET } });
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, '', { token: await sign(SECRET, 'HS256', claims('7777')) }),
      'token signed with the HERALD_JWT_SECRET value');
    assertAuthError(await trySubscribe(s.url, '', { token: await sign('another-secret-0123456789abcdef', 'HS256', claims('7777')) }),
      'token_invalid', 'token signed with another secret', { message: /signature/i });
    assertAuthError(await trySubscribe(s.url, ''), 'token_missing', 'no token');
  });

  test('--dev still needs no token', { timeout: 20_000 }, async () => {
    const s = await startSecured(['--dev', '--heartbeat-secs', '300']);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, 'user=7777'), 'dev mode, ?user=7777, no token');
    const r = await publish(s.url, { users: ['7777'], data: 'x' });
    assert.equal(r.status, 201, `dev mode publish without a token: ${r.text}`);
  });
});

describe('herald token', () => {
  test('--sub 7777 --jwt-secret S --ttl 1h: HS256, sub, exp about an hour away, accepted by the server', { timeout: 20_000 }, async () => {
    const t0 = nowSecs();
    const tok = await mintWithCli(['--sub', '7777', '--jwt-secret', SECRET, '--ttl', '1h']);
    const { payload, protectedHeader } = await jose.jwtVerify(tok, new TextEncoder().encode(SECRET));
    assert.equal(protectedHeader.alg, 'HS256');
    assert.equal(payload.sub, '7777');
    assert.ok(Math.abs(payload.exp - (t0 + 3600)) <= 60, `exp ${payload.exp} is about now + 3600 (${t0 + 3600})`);

    const s = await startSecured(['--jwt-secret', SECRET, '--heartbeat-secs', '300']);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, '', { token: tok }), 'herald token output, subscribe');
    // Only its personal topic: no herald.subscribe was asked for.
    assertAuthError(await trySubscribe(s.url, 'topic=orders/1', { token: tok }), 'topic_not_allowed',
      'herald token without --subscribe, topic=orders/1', { message: /orders\/1/ });
  });

  test('--subscribe, --publish and --admin become the herald.* claims', { timeout: 20_000 }, async () => {
    const tok = await mintWithCli([
      '--sub', 'ops', '--jwt-secret', SECRET, '--ttl', '10m',
      '--subscribe', 'orders/*', '--subscribe', 'news', '--publish', 'news', '--admin',
    ]);
    const { payload } = await jose.jwtVerify(tok, new TextEncoder().encode(SECRET));
    assert.equal(payload.sub, 'ops');
    assert.deepEqual(payload['herald.subscribe'], ['orders/*', 'news']);
    assert.deepEqual(payload['herald.publish'], ['news']);
    assert.equal(payload['herald.admin'], true);
    assert.ok(Math.abs(payload.exp - (nowSecs() + 600)) <= 60, `--ttl 10m: exp ${payload.exp}`);

    const s = await startSecured(['--jwt-secret', SECRET, '--heartbeat-secs', '300']);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, 'topic=orders/42&topic=news', { token: tok }), 'subscribe orders/42 and news');
    const ok = await publish(s.url, { topics: ['news'], data: 'x' }, { headers: bearer(tok) });
    assert.equal(ok.status, 201, `publish to news: ${ok.text}`);
    assertAuthError(await publish(s.url, { topics: ['orders/1'], data: 'x' }, { headers: bearer(tok) }),
      'publish_not_allowed', 'publish to orders/1 with --publish news', { message: /orders\/1/ });
    const stats = await request(s.url, '/v1/stats', { headers: bearer(tok) });
    assert.equal(stats.status, 200, `--admin token on /v1/stats: ${stats.text}`);
  });

  test('--private-key signs with the key type (RS256, ES256, EdDSA) and --kid sets the kid', { timeout: 30_000 }, async () => {
    const pairs = {
      RS256: await keyPair(dir, 'cli-rsa', 'RS256'),
      ES256: await keyPair(dir, 'cli-ec', 'ES256'),
      EdDSA: await keyPair(dir, 'cli-ed', 'EdDSA'),
    };
    const s = await startSecured([
      '--jwt-public-key', pairs.RS256.pubFile, '--jwt-public-key', pairs.ES256.pubFile,
      '--jwt-public-key', pairs.EdDSA.pubFile, '--heartbeat-secs', '300',
    ]);
    servers.push(s);
    for (const [alg, pair] of Object.entries(pairs)) {
      const tok = await mintWithCli(['--sub', '7777', '--private-key', pair.keyFile, '--kid', `kid-${alg}`, '--ttl', '1h']);
      const { header } = decodeToken(tok);
      assert.equal(header.alg, alg, `the algorithm follows the key type: ${JSON.stringify(header)}`);
      assert.equal(header.kid, `kid-${alg}`);
      const { payload } = await jose.jwtVerify(tok, pair.publicKey);
      assert.equal(payload.sub, '7777');
      assertStreamOpened(await trySubscribe(s.url, '', { token: tok }), `${alg} token from herald token --private-key`);
    }
  });

  test('audience and issuer come from the config file', { timeout: 20_000 }, async () => {
    const cfg = join(dir, 'aud.toml');
    writeFileSync(cfg, 'jwt_audience = "cli-audience"\njwt_issuer = "https://cli-issuer.test"\n');
    const tok = await mintWithCli(['--sub', '7777', '--jwt-secret', SECRET, '--config', cfg, '--ttl', '1h']);
    const { payload } = await jose.jwtVerify(tok, new TextEncoder().encode(SECRET), {
      audience: 'cli-audience', issuer: 'https://cli-issuer.test',
    });
    assert.equal(payload.sub, '7777');

    const s = await startSecured(['--config', cfg, '--jwt-secret', SECRET, '--heartbeat-secs', '300']);
    servers.push(s);
    assertStreamOpened(await trySubscribe(s.url, '', { token: tok }), 'token with the configured aud and iss');
    assertAuthError(await trySubscribe(s.url, '', { token: await sign(SECRET, 'HS256', claims('7777')) }),
      'token_invalid', 'token without the configured aud', { message: /aud/i });
  });

  test('bad usage exits 64', { timeout: 20_000 }, async () => {
    const noSub = await runHerald(['token', '--jwt-secret', SECRET]);
    assert.equal(noSub.code, 64, `no --sub: ${noSub.stderr}`);
    const noKey = await runHerald(['token', '--sub', '7777']);
    assert.equal(noKey.code, 64, `neither --jwt-secret nor --private-key: ${noKey.stderr}`);
  });
});
