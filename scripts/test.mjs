#!/usr/bin/env node
// The whole test suite: type-check, lint, build the packages, build (or reuse) SPIRE, OPA and Vault,
// then every *.test.ts with Node's test runner. Integration tests (*.spire.test.ts, *.e2e.test.ts)
// start real SPIRE, *.opa.test.ts (and any test using harness/opa.ts) a real OPA, the Vault
// e2e tests a real Vault; Redis-backed tests use 127.0.0.1:6379; none of them is skipped.
//
//   npm test                 everything
//   npm test -- --unit       only unit tests (no SPIRE)
//   npm test -- path/to/x.test.ts ...   just those files
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureOpa } from './build-opa.mjs';
import { ensureSpire } from './build-spire.mjs';
import { ensureVault } from './build-vault.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const unitOnly = args.includes('--unit');
const explicit = args.filter((a) => !a.startsWith('--'));

function step(name, cmd, cmdArgs) {
  process.stderr.write(`\n== ${name}\n`);
  const r = spawnSync(cmd, cmdArgs, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`${name} failed\n`);
    process.exit(r.status ?? 1);
  }
}

function findTests(dir, out = []) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === 'dist' || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) findTests(p, out);
    else if (name.endsWith('.test.ts')) out.push(relative(root, p));
  }
  return out;
}

const isIntegration = (f) => /\.(spire|e2e|redis|opa)\.test\.ts$/.test(f);
const needsOpa = (f) =>
  /\.opa\.test\.ts$/.test(f) || readFileSync(join(root, f), 'utf8').includes('harness/opa.ts');

if (explicit.length === 0) {
  step('type-check (tsc --noEmit)', 'npx', ['tsc', '-p', 'tsconfig.json', '--noEmit']);
  step('lint (biome check)', 'npx', ['biome', 'check', '.']);
  // test/packages.e2e.test.ts builds too (run alone it must); built here first, that is an
  // up-to-date check instead of a compile competing for the CPU with the timing-sensitive SPIRE tests.
  if (!unitOnly) step('build (tsc -b tsconfig.build.json)', 'npx', ['tsc', '-b', 'tsconfig.build.json']);
}

let files = explicit.length ? explicit : findTests(root).sort();
if (unitOnly) files = files.filter((f) => !isIntegration(f));
if (files.some((f) => isIntegration(f) && !/\.opa\.test\.ts$/.test(f))) {
  process.stderr.write('\n== SPIRE binaries\n');
  process.env.TASKPASS_SPIRE_BIN = await ensureSpire();
  process.stderr.write(`using ${process.env.TASKPASS_SPIRE_BIN}\n`);
}
// Tests that start a real Vault server (harness/vault.ts) get it built or reused first.
if (files.some((f) => /vault/.test(f) && isIntegration(f))) {
  process.stderr.write('\n== Vault binary\n');
  process.env.TASKPASS_VAULT_BIN = await ensureVault();
  process.stderr.write(`using ${process.env.TASKPASS_VAULT_BIN}\n`);
}

if (!process.env.TASKPASS_OPA_BIN && files.some(needsOpa)) {
  process.stderr.write('\n== OPA binary\n');
  process.env.TASKPASS_OPA_BIN = await ensureOpa();
  process.stderr.write(`using ${process.env.TASKPASS_OPA_BIN}\n`);
}
process.stderr.write(`\n== node --test (${files.length} files)\n`);
const r = spawnSync(
  process.execPath,
  [
    '--conditions=taskpass:source',
    '--import',
    'tsx',
    '--test',
    `--test-concurrency=${Math.max(2, availableParallelism())}`,
    // Per file and per test: the SPIRE agent outage e2e rides real SVID lifetimes (~2 min alone,
    // more beside other integration files on 2 cores); a hung test still fails within 5 minutes.
    '--test-timeout=300000',
    ...files,
  ],
  {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, TASKPASS_LOG_LEVEL: process.env.TASKPASS_LOG_LEVEL ?? 'silent' },
  },
);
process.exit(r.status ?? 1);
