// An MCP server on the SDK 2.x packages with express — @modelcontextprotocol/express's app (JSON
// parser, DNS-rebinding protection) and @modelcontextprotocol/server — protected by
// @taskpass/verifier. The middleware takes the body express.json() parsed (its size limit applies).
// Run by test/packages.e2e.test.ts with plain `node`; prints `{ "mcpUrl": … }`, runs until SIGTERM.
import { createServer } from 'node:https';
import { createMcpExpressApp } from '@modelcontextprotocol/express';
import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler } from '@modelcontextprotocol/server';
import { protection } from './notes.js';
import { notesServer } from './sdk2-tools.js';

const { guard, mtls, serve } = await protection({ requireMcpHeaders: true });
const mcp = toNodeHandler(createMcpHandler(notesServer));

const app = createMcpExpressApp({ host: '127.0.0.1' });
app.post(
  '/mcp',
  (req, res, next) => void guard(req, res, next),
  (req, res) => void mcp(req, res, req.body),
);

const server = createServer(mtls.options, app);
mtls.attach(server);
serve(server);
