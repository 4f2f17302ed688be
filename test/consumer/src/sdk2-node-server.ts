// An MCP server on the SDK 2.x packages with node:https — @modelcontextprotocol/server and /node —
// protected by @taskpass/verifier, requiring the 2026-07-28 standard headers (Mcp-Method, Mcp-Name).
// Run by test/packages.e2e.test.ts with plain `node`; prints `{ "mcpUrl": … }`, runs until SIGTERM.
import { createServer } from 'node:https';
import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler } from '@modelcontextprotocol/server';
import type { TaskpassRequest } from '@taskpass/verifier';
import { protection } from './notes.js';
import { notesServer } from './sdk2-tools.js';

const { guard, mtls, serve } = await protection({ requireMcpHeaders: true });
const mcp = toNodeHandler(createMcpHandler(notesServer));

const server = createServer(mtls.options, (req: TaskpassRequest, res) => {
  if ((req.url ?? '/').split('?')[0] !== '/mcp') {
    res.writeHead(404).end();
    return;
  }
  void guard(req, res, () => mcp(req, res, req.body));
});
mtls.attach(server);
serve(server);
