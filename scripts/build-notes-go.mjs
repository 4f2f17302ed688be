#!/usr/bin/env node
// Builds mcp-notes-go (tools/mcp-notes-go: a Go MCP server on github.com/modelcontextprotocol/go-sdk
// with no Taskpass code, run behind `taskpass guard` by its tests and bench) into the tools cache,
// reused while the SDK version, go.sum and main.go are unchanged.
//
//   node scripts/build-notes-go.mjs          build if needed, print the binary's path on stdout
//   node scripts/build-notes-go.mjs --force  rebuild even when cached
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGoTool, pinnedVersion } from './go-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const moduleDir = join(root, 'tools', 'mcp-notes-go');
export const NOTES_BINARY = 'mcp-notes-go';

/** Returns the path of the mcp-notes-go binary, building it if needed. */
export async function ensureNotesGo({ force = false, log = (s) => process.stderr.write(s) } = {}) {
  const version = pinnedVersion(moduleDir, 'github.com/modelcontextprotocol/go-sdk');
  const bin = await ensureGoTool({
    name: NOTES_BINARY,
    label: `mcp-notes-go (go-sdk ${version})`,
    version,
    moduleDir,
    keyFiles: ['go.mod', 'main.go'],
    packages: ['.'],
    binaries: [NOTES_BINARY],
    // Modules come from the Go module proxy; go.sum in the repository pins them.
    env: { GOFLAGS: '-mod=mod', CGO_ENABLED: '0' },
    note: 'The first build compiles the MCP Go SDK and takes a minute or two; later runs reuse it.',
    force,
    log,
  });
  return join(bin, NOTES_BINARY);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  ensureNotesGo({ force: process.argv.includes('--force') }).then(
    (path) => process.stdout.write(`${path}\n`),
    (err) => {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(1);
    },
  );
}
