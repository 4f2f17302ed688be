// The notes tools on the MCP TypeScript SDK 2.x (@modelcontextprotocol/server): one server per
// request from a factory, as createMcpHandler wants it. Handlers read the verified caller with
// callerOf(ctx) — 2.x hands the middleware's req.auth to them as ctx.http.authInfo.
import { McpServer } from '@modelcontextprotocol/server';
import { callerOf } from '@taskpass/verifier';
import { z } from 'zod';
import { NOTE_ID, NOTE_TOOLS, readNote } from './notes.js';

export function notesServer(): McpServer {
  const mcp = new McpServer({ name: 'notes', version: '2.0.0' });
  const inputSchema = z.object({ note_id: z.string().regex(NOTE_ID) });
  mcp.registerTool('read_note', { ...NOTE_TOOLS.read_note, inputSchema }, async ({ note_id }, ctx) =>
    readNote(note_id, callerOf(ctx)),
  );
  mcp.registerTool('delete_note', { ...NOTE_TOOLS.delete_note, inputSchema }, async ({ note_id }) => ({
    content: [{ type: 'text', text: `deleted ${note_id}` }],
  }));
  return mcp;
}
