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

/** Builds (with progress) or reuses a pinned tool; prints where it is and exits 1 if it cannot be had. */
async function ensureTool(name, version, ensure, noun) {
  const t0 = Date.now();
  let built = false;
  let path;
  try {
    path = await ensure({
      log: (s) => {
        built = true;
        process.stdout.write(`  ${s.trimStart()}`);
      },
    });
  } catch (e) {
    console.error(`cannot build ${name}: ${e instanceof Error ? e.message : e}`);
    process.exit(1);
  }
  const how = built ? `built in ${Math.round((Date.now() - t0) / 1000)} s` : 'cached';
  process.stdout.write(`${name} ${version} ${noun} ${how}: ${path}\n`);
  return path;
}

const env = {
  ...process.env,
  TASKPASS_SPIRE_BIN: await ensureTool('SPIRE', spireVersion(), ensureSpire, 'binaries'),
};
if (process.argv.slice(2).includes('--vault')) {
  env.TASKPASS_VAULT_BIN = await ensureTool('Vault', vaultVersion(), ensureVault, 'binary');
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
