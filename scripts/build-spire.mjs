#!/usr/bin/env node
// Builds spire-server and spire-agent from the Go module in tools/spire into a versioned cache
// outside the checkout, and reuses that build while the pinned version and go.sum are unchanged
// (the cache logic is go-tools.mjs, shared with the other Go tools).
//
//   node scripts/build-spire.mjs          build if needed, print the bin directory on stdout
//   node scripts/build-spire.mjs --force  rebuild even when cached
//
// Cache root: $TASKPASS_CACHE_DIR, else $XDG_CACHE_HOME/taskpass, else ~/.cache/taskpass.
// Progress goes to stderr so callers can capture the bin path from stdout.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGoTool, goToolCacheDir, pinnedVersion } from './go-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const moduleDir = join(root, 'tools', 'spire');
const TOOLS = ['spire-server', 'spire-agent'];

export function spireVersion() {
  return pinnedVersion(moduleDir, 'github.com/spiffe/spire');
}

export function spireCacheDir() {
  return goToolCacheDir({ name: 'spire', version: spireVersion(), moduleDir });
}

/** Returns the directory holding spire-server and spire-agent, building them if needed. */
export async function ensureSpire({ force = false, log = (s) => process.stderr.write(s) } = {}) {
  return ensureGoTool({
    name: 'spire',
    label: `SPIRE ${spireVersion()}`,
    version: spireVersion(),
    moduleDir,
    packages: TOOLS.map((t) => `github.com/spiffe/spire/cmd/${t}`),
    binaries: TOOLS,
    // cgo is mandatory: SPIRE's sqlite datastore is mattn/go-sqlite3.
    // GOFLAGS=-mod=mod is not used: go.sum in the repo is the source of truth.
    env: { CGO_ENABLED: '1', GOFLAGS: process.env.GOFLAGS ?? '' },
    note: 'The first build compiles ~2,300 Go packages and takes a few minutes; later runs reuse it.',
    force,
    log,
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  ensureSpire({ force: process.argv.includes('--force') }).then(
    (bin) => process.stdout.write(`${bin}\n`),
    (err) => {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(1);
    },
  );
}
