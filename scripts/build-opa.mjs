#!/usr/bin/env node
// Builds the `opa` server from the Go module in tools/opa (pinned github.com/open-policy-agent/opa)
// into the versioned tools cache, and reuses that build while the pin and go.sum are unchanged (the
// cache logic is go-tools.mjs, shared with SPIRE and the other Go tools).
//
//   node scripts/build-opa.mjs          build if needed, print the bin directory on stdout
//   node scripts/build-opa.mjs --force  rebuild even when cached
//
// Progress goes to stderr so callers can capture the bin path from stdout.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGoTool, pinnedVersion } from './go-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const moduleDir = join(root, 'tools', 'opa');

export function opaVersion() {
  return pinnedVersion(moduleDir, 'github.com/open-policy-agent/opa');
}

/** Returns the directory holding `opa`, building it if needed. */
export async function ensureOpa({ force = false, log = (s) => process.stderr.write(s) } = {}) {
  return ensureGoTool({
    name: 'opa',
    label: `OPA ${opaVersion()}`,
    version: opaVersion(),
    moduleDir,
    packages: ['github.com/open-policy-agent/opa'],
    binaries: ['opa'],
    // Pure Go: no cgo toolchain needed on a clean CI machine.
    env: { CGO_ENABLED: '0', GOFLAGS: process.env.GOFLAGS ?? '' },
    note: 'The first build compiles ~600 Go packages and takes a few minutes; later runs reuse it.',
    force,
    log,
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  ensureOpa({ force: process.argv.includes('--force') }).then(
    (bin) => process.stdout.write(`${bin}\n`),
    (err) => {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(1);
    },
  );
}
