// deploy/herald.service and deploy/herald.toml: the unit is checked by
// systemd's own `systemd-analyze verify` and `security` (offline, on a
// temporary root laid out as the unit's comments say to install it), and
// the real binary starts with the example config.
//
// Not checked here: the unit actually running under systemd (a container
// has no systemd as PID 1).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEPLOY_DIR } from './lib/proxy.mjs';
import { heraldBin, startHerald, request } from './lib/server.mjs';

const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';
const noSystemd = !existsSync(SYSTEMD_ANALYZE) && `no ${SYSTEMD_ANALYZE} (Debian package systemd)`;
const UNIT = join(DEPLOY_DIR, 'herald.service');

let root;

before(() => {
  if (noSystemd) return;
  // The unit's install steps, into a temporary root: the binary, the config
  // and the unit; plus the distribution's own units, which the checks
  // resolve the unit's dependencies (network-online.target, ...) against.
  root = mkdtempSync(join(tmpdir(), 'herald-systemd-root-'));
  mkdirSync(join(root, 'usr/local/bin'), { recursive: true });
  mkdirSync(join(root, 'etc/herald'), { recursive: true });
  mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
  mkdirSync(join(root, 'usr/lib/systemd'), { recursive: true });
  cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  try {
    linkSync(heraldBin(), join(root, 'usr/local/bin/herald'));
  } catch {
    copyFileSync(heraldBin(), join(root, 'usr/local/bin/herald'));
  }
  copyFileSync(join(DEPLOY_DIR, 'herald.toml'), join(root, 'etc/herald/herald.toml'));
  copyFileSync(UNIT, join(root, 'etc/systemd/system/herald.service'));
});

after(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

function analyze(args) {
  const r = spawnSync(SYSTEMD_ANALYZE, args, { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

test('systemd-analyze verify finds nothing to say about the unit', { skip: noSystemd }, () => {
  // A bad value or an unknown key is only a warning (exit 0): any output fails.
  const { status, output } = analyze(['verify', '--man=no', `--root=${root}`, 'herald.service']);
  assert.equal(status, 0, output);
  assert.equal(output, '', 'no warning');
});

test('systemd-analyze security rates the unit well hardened (exposure at most 2.0)', { skip: noSystemd }, () => {
  const { status, output } = analyze(['security', '--offline=yes', `--root=${root}`, '--threshold=20', 'herald.service']);
  assert.equal(status, 0, output.split('\n').slice(-3).join('\n'));
  assert.match(output, /Overall exposure level for herald\.service: [0-2]\.\d/);
});

test('the unit has the settings its deployment depends on', () => {
  // Parsed as systemd reads it: `Key=value` lines of [Service], comments skipped.
  const settings = new Map();
  let section = '';
  for (const raw of readFileSync(UNIT, 'utf8').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) { section = s[1]; continue; }
    const [key, ...value] = line.split('=');
    if (section === 'Service') settings.set(key, value.join('='));
  }
  assert.equal(settings.get('ExecStart'), '/usr/local/bin/herald serve --config /etc/herald/herald.toml');
  for (const [key, value] of [
    ['DynamicUser', 'yes'], ['StateDirectory', 'herald'], ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['NoNewPrivileges', 'yes'],
    ['Restart', 'on-failure'], ['RestartPreventExitStatus', '64'],
  ]) {
    assert.equal(settings.get(key), value, `${key}=`);
  }
  assert.ok(Number(settings.get('LimitNOFILE')) >= 65536, `LimitNOFILE=${settings.get('LimitNOFILE')} is high`);
  // The config puts the log where the unit's StateDirectory is.
  assert.match(readFileSync(join(DEPLOY_DIR, 'herald.toml'), 'utf8'), /^data_dir = "\/var\/lib\/herald"$/m);
});

test('herald starts with deploy/herald.toml', async () => {
  // Its data_dir and listen address are the unit's; here they are
  // overridden by flags (flags win over the file), as is the secret's
  // place: the environment, as herald.env gives it.
  const dataDir = mkdtempSync(join(tmpdir(), 'herald-deploy-toml-'));
  let herald;
  try {
    herald = await startHerald(
      ['--config', join(DEPLOY_DIR, 'herald.toml'), '--data-dir', dataDir, '--listen', '127.0.0.1:0'],
      { dev: false, env: { HERALD_JWT_SECRET: 'a-secret-of-at-least-16-bytes' } },
    );
    const health = await request(herald.url, '/healthz');
    assert.equal(health.status, 200, health.text);
    // Token mode: a subscription without a token is refused.
    const anonymous = await request(herald.url, '/v1/events?topic=news', { timeoutMs: 5_000 });
    assert.equal(anonymous.status, 401, anonymous.text);
  } finally {
    await herald?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
