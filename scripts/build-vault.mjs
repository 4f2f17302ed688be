#!/usr/bin/env node
// Builds HashiCorp Vault v1.14.1 (MPL-2.0; later patch releases are BSL) from the wrapper Go module
// in tools/vault into the versioned tools cache, reused while the pinned version and go.sum are
// unchanged (the cache logic is go-tools.mjs, shared with the other Go tools).
//
// tools/vault/go.mod pins github.com/hashicorp/vault@v1.14.1 with the sdk at the v1.14.1 tag's
// commit (the sdk version Vault's own go.mod names does not compile; the v0.9.2 tag panics at
// start-up) and `godebug x509negativeserial=1` (a dependency embeds a certificate recent Go
// rejects). The module has no Go files: never `go mod tidy` it.
//
//   node scripts/build-vault.mjs          build if needed, print the binary's path on stdout
//   node scripts/build-vault.mjs --force  rebuild even when cached
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGoTool, pinnedVersion } from './go-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const moduleDir = join(root, 'tools', 'vault');
export const VAULT_BINARY = 'vault';

export function vaultVersion() {
  return pinnedVersion(moduleDir, 'github.com/hashicorp/vault');
}

/** Returns the path of the vault binary, building it if needed. */
export async function ensureVault({ force = false, log = (s) => process.stderr.write(s) } = {}) {
  const bin = await ensureGoTool({
    name: VAULT_BINARY,
    label: `Vault ${vaultVersion()}`,
    version: vaultVersion(),
    moduleDir,
    keyFiles: ['go.mod'],
    packages: ['github.com/hashicorp/vault'],
    binaries: [VAULT_BINARY],
    // Modules come from the Go module proxy; go.sum in the repository pins them.
    env: { GOFLAGS: '-mod=mod', CGO_ENABLED: '0' },
    note: 'The first build compiles ~2,000 Go packages (~9 minutes on 2 cores, 183 MB); later runs reuse it.',
    force,
    log,
  });
  return join(bin, VAULT_BINARY);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  ensureVault({ force: process.argv.includes('--force') }).then(
    (path) => process.stdout.write(`${path}\n`),
    (err) => {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(1);
    },
  );
}
