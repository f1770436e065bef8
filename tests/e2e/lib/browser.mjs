// Headless Chromium as every browser test launches it, and the self-signed
// certificate the TLS tests serve.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** Debian's Chromium (never a downloaded one). */
export const CHROMIUM = '/usr/bin/chromium';

/** For `test(..., { skip })`: a reason when there is no Chromium here. */
export const noChromium = !existsSync(CHROMIUM) && 'no /usr/bin/chromium';

/**
 * Launches headless Chromium with a fresh profile directory (playwright
 * passes it as --user-data-dir). `ignoreCertificates` accepts self-signed
 * certificates. Returns {browser, close()}; close() also removes the profile.
 */
export async function launchChromium({ ignoreCertificates = false } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'herald-chromium-'));
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ];
  if (ignoreCertificates) args.push('--ignore-certificate-errors');
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors: ignoreCertificates,
    args,
  });
  return {
    browser,
    close: async () => {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * A self-signed P-256 certificate for IP 127.0.0.1 and DNS localhost, made
 * with the openssl CLI in `dir`. Returns {cert, key} (file paths).
 */
export function selfSignedCert(dir) {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=herald-e2e',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ], { stdio: 'ignore', timeout: 20_000 });
  return { cert, key };
}
