// The two kinds of upstream behind the guard share one face: forward a verified request and write
// the answer on the caller's response, and list the upstream's tools at start-up.
import type { ServerResponse } from 'node:http';
import type { CallerIdentity } from './headers.ts';

/** A tool as the upstream's tools/list describes it (only what the guard reads). */
export interface UpstreamTool {
  name: string;
  annotations?: { readOnlyHint?: boolean; destructiveHint?: boolean; [k: string]: unknown };
  _meta?: Record<string, unknown>;
}

/** One verified request to forward. */
export interface ForwardRequest {
  method: string;
  /** The path and query of the request (the MCP endpoint). */
  url: string;
  /** The headers for the upstream (allowlisted, identity, secret). */
  headers: Record<string, string>;
  /** Who is calling (stdio upstreams get it in `params._meta["dev.taskpass/caller"]`). */
  identity?: CallerIdentity | undefined;
  /** The parsed JSON-RPC body of a POST. */
  body: unknown;
  /** Aborted when the caller goes away. */
  signal: AbortSignal;
}

/** An upstream MCP server. */
export interface Upstream {
  readonly kind: 'http' | 'stdio';
  /** Starts it (stdio: launch and initialize); resolves when it can serve. */
  start(): Promise<void>;
  /** Whether it can serve now (stdio: the process runs). */
  ready(): boolean;
  /** Forwards one request and streams the answer to `res`. Throws GuardError before the answer starts. */
  forward(req: ForwardRequest, res: ServerResponse): Promise<void>;
  /** Every tool of tools/list (following pagination). */
  listTools(headers: Record<string, string>): Promise<UpstreamTool[]>;
  close(): Promise<void>;
}

/** Reads `tools` and `nextCursor` of one tools/list result, leniently: unusable entries are skipped. */
export function toolsOfListResult(result: unknown): { tools: UpstreamTool[]; nextCursor?: string } {
  const r = (typeof result === 'object' && result !== null ? result : {}) as {
    tools?: unknown;
    nextCursor?: unknown;
  };
  const tools: UpstreamTool[] = [];
  for (const t of Array.isArray(r.tools) ? r.tools : []) {
    if (typeof t !== 'object' || t === null || typeof (t as { name?: unknown }).name !== 'string') continue;
    const { name, annotations, _meta } = t as Record<string, unknown>;
    const tool: UpstreamTool = { name: name as string };
    if (typeof annotations === 'object' && annotations !== null && !Array.isArray(annotations))
      tool.annotations = annotations as UpstreamTool['annotations'];
    if (typeof _meta === 'object' && _meta !== null && !Array.isArray(_meta))
      tool._meta = _meta as Record<string, unknown>;
    tools.push(tool);
  }
  return typeof r.nextCursor === 'string' ? { tools, nextCursor: r.nextCursor } : { tools };
}

/** Where a stdio upstream finds the caller's identity: `params._meta[META_CALLER]`. */
export const META_CALLER = 'dev.taskpass/caller';

/** The protocol version the guard speaks when it initializes an upstream itself. */
export const GUARD_PROTOCOL_VERSION = '2025-06-18';
export const GUARD_CLIENT_INFO = { name: 'taskpass-guard', version: '0.1.0' };
