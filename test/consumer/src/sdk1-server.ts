// An MCP server on @modelcontextprotocol/sdk 1.x protected by @taskpass/verifier, as a server author
// writes it from the installed packages alone. Stateless Streamable HTTP over node:https with mTLS.
// Run by test/packages.e2e.test.ts with plain `node`; prints `{ "mcpUrl": … }`, runs until SIGTERM.
import { createServer } from 'node:https';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { callerOf, type TaskpassRequest } from '@taskpass/verifier';
import { z } from 'zod';
import { NOTE_ID, NOTE_TOOLS, protection, readNote } from './notes.js';

const { guard, mtls, serve } = await protection();
const inputSchema = { note_id: z.string().regex(NOTE_ID) };

const server = createServer(mtls.options, (req: TaskpassRequest, res) => {
  if ((req.url ?? '/').split('?')[0] !== '/mcp') {
    res.writeHead(404).end();
    return;
  }
  void guard(req, res, async () => {
    const mcp = new McpServer({ name: 'notes', version: '1.0.0' });
    mcp.registerTool('read_note', { ...NOTE_TOOLS.read_note, inputSchema }, async ({ note_id }, extra) =>
      readNote(note_id, callerOf(extra)),
    );
    mcp.registerTool('delete_note', { ...NOTE_TOOLS.delete_note, inputSchema }, async ({ note_id }) => ({
      content: [{ type: 'text', text: `deleted ${note_id}` }],
    }));
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.once('close', () => {
      void transport.close();
      void mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
});
mtls.attach(server);
serve(server);
