/**
 * The Go MCP server of tools/mcp-notes-go (github.com/modelcontextprotocol/go-sdk, no Taskpass
 * code) as a child process: built into the tools cache on first use (scripts/build-notes-go.mjs),
 * started on an ephemeral loopback port, asked what it served.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** One tools/call the Go server executed. */
export interface ServedCall {
  tool: string;
  args: Record<string, unknown>;
  /** The Taskpass-* headers it arrived with (lower case; never the guard secret). */
  headers: Record<string, string>;
  /** Whether an Authorization header reached it. */
  authorization: boolean;
}

/** A running mcp-notes-go. */
export interface NotesGo {
  /** `http://127.0.0.1:<port>` */
  readonly origin: string;
  /** `http://127.0.0.1:<port>/mcp` */
  readonly mcpUrl: string;
  /** Every tool call it served so far. */
  calls(): Promise<ServedCall[]>;
  close(): Promise<void>;
}

/** The path of the mcp-notes-go binary, building it when it is not cached yet. */
export async function notesGoBinary(): Promise<string> {
  const url = pathToFileURL(join(repoRoot, 'scripts', 'build-notes-go.mjs')).href;
  const { ensureNotesGo } = (await import(url)) as { ensureNotesGo(): Promise<string> };
  return ensureNotesGo();
}

/** Starts mcp-notes-go on 127.0.0.1 (optionally demanding the guard's shared secret). */
export async function startNotesGo(opts: { secretFile?: string; binary?: string } = {}): Promise<NotesGo> {
  const bin = opts.binary ?? (await notesGoBinary());
  const args = ['-addr', '127.0.0.1:0', ...(opts.secretFile ? ['-guard-secret-file', opts.secretFile] : [])];
  const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr = `${stderr}${d}`.slice(-2000);
  });
  const origin = await new Promise<string>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`mcp-notes-go did not start: ${stderr}`)), 10_000);
    child.once('exit', (code) => rej(new Error(`mcp-notes-go exited (${code}): ${stderr}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /^listening (http:\/\/\S+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        res(m[1]!);
      }
    });
  });
  return {
    origin,
    mcpUrl: `${origin}/mcp`,
    async calls() {
      const r = await fetch(`${origin}/calls`);
      return ((await r.json()) as { calls: ServedCall[] | null }).calls ?? [];
    },
    close: () =>
      new Promise<void>((res) => {
        if (child.exitCode !== null) return res();
        child.once('exit', () => res());
        child.kill('SIGTERM');
      }),
  };
}
