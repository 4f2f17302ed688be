#!/usr/bin/env node
// `npm run demo`: makes sure the SPIRE binaries exist (building them once, with progress, takes a
// few minutes; later runs reuse the cache), then runs examples/demo.ts, which starts the whole
// stack on 127.0.0.1, tells the story and stops everything. The exit code is the demo's: 0 when
// every step went as expected. With `--vault` it makes sure of the Vault binary the same way
// (scripts/build-vault.mjs) and the demo signs with Transit and leases per-task database users.
import { spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureSpire, spireVersion } from './build-spire.mjs';
import { ensureVault, vaultVersion } from './build-vault.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const t0 = Date.now();
let built = false;
let bin;
try {
  bin = await ensureSpire({
    log: (s) => {
      built = true;
      process.stdout.write(`  ${s.trimStart()}`);
    },
  });
} catch (e) {
  console.error(`cannot build SPIRE: ${e instanceof Error ? e.message : e}`);
  process.exit(1);
}
process.stdout.write(
  `SPIRE ${spireVersion()} binaries ${built ? `built in ${Math.round((Date.now() - t0) / 1000)} s` : 'cached'}: ${bin}\n`,
);

const env = { ...process.env, TASKPASS_SPIRE_BIN: bin };
if (process.argv.slice(2).includes('--vault')) {
  const v0 = Date.now();
  let vaultBuilt = false;
  try {
    env.TASKPASS_VAULT_BIN = await ensureVault({
      log: (s) => {
        vaultBuilt = true;
        process.stdout.write(`  ${s.trimStart()}`);
      },
    });
  } catch (e) {
    console.error(`cannot build Vault: ${e instanceof Error ? e.message : e}`);
    process.exit(1);
  }
  process.stdout.write(
    `Vault ${vaultVersion()} binary ${vaultBuilt ? `built in ${Math.round((Date.now() - v0) / 1000)} s` : 'cached'}: ${env.TASKPASS_VAULT_BIN}\n`,
  );
}

const child = spawn(
  process.execPath,
  [
    '--conditions=taskpass:source',
    '--import',
    'tsx',
    join(root, 'examples', 'demo.ts'),
    ...process.argv.slice(2),
  ],
  { cwd: root, stdio: 'inherit', env },
);
// Ctrl-C reaches the child too (same process group); it stops SPIRE on its way out.
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
