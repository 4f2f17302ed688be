// Reading a JSON-RPC body with bounds that hold before JSON.parse runs. JSON.parse is linear in
// size but a deeply nested body is far slower per byte (about 0.3 s per MiB of `[[[…` on Node 20)
// and code walking the result recursively can overflow the stack, so nesting is counted while the
// bytes arrive: a single pass over bytes, no allocation, stopped at the first byte too many.
import { JSONRPC_PARSE_ERROR, VerifierError } from './errors.ts';

/** Default largest body: a tool call with sizeable arguments fits; parsing it takes milliseconds. */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
/** Default deepest nesting of arrays/objects: JSON-RPC envelope (3) plus deeply structured arguments. */
export const DEFAULT_MAX_JSON_DEPTH = 64;

/** Limits of {@link readJsonBody}. */
export interface BodyLimits {
  /** Largest body in bytes (default 1 MiB). */
  maxBytes?: number;
  /** Deepest nesting of JSON arrays and objects (default 64). */
  maxDepth?: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_ARRAY = 0x5b;
const OPEN_OBJECT = 0x7b;
const CLOSE_ARRAY = 0x5d;
const CLOSE_OBJECT = 0x7d;

const tooDeep = (max: number) =>
  new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', `the body nests JSON deeper than ${max} levels`);
const tooLarge = (max: number) =>
  new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', `the body is larger than ${max} bytes`);

/**
 * Counts JSON nesting over a byte stream, chunk by chunk, and throws
 * `TASKPASS_VERIFY_BAD_REQUEST` at the first byte that opens one level too many. It tracks strings
 * (and escapes in them) so brackets inside strings do not count; it does not validate JSON, which
 * JSON.parse does afterwards. UTF-8 continuation bytes never equal the ASCII bytes it looks for.
 *
 * @example
 * ```ts
 * const guard = new JsonNestingGuard(64);
 * for await (const chunk of req) guard.push(chunk); // throws when too deep
 * ```
 */
export class JsonNestingGuard {
  readonly #max: number;
  #depth = 0;
  #inString = false;
  #escaped = false;

  constructor(maxDepth: number) {
    this.#max = maxDepth;
  }

  push(chunk: Uint8Array): void {
    let depth = this.#depth;
    let inString = this.#inString;
    let escaped = this.#escaped;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (inString) {
        if (escaped) escaped = false;
        else if (b === BACKSLASH) escaped = true;
        else if (b === QUOTE) inString = false;
      } else if (b === QUOTE) inString = true;
      else if (b === OPEN_ARRAY || b === OPEN_OBJECT) {
        if (++depth > this.#max) throw tooDeep(this.#max);
      } else if (b === CLOSE_ARRAY || b === CLOSE_OBJECT) depth--;
    }
    this.#depth = depth;
    this.#inString = inString;
    this.#escaped = escaped;
  }
}

/**
 * Reads and parses a JSON body within `limits`: a declared `content-length` above the limit is
 * refused before a byte is read, the size and nesting are checked while the body arrives, and
 * JSON.parse runs only on a body within both. Refusals are `TASKPASS_VERIFY_BAD_REQUEST` (JSON-RPC
 * -32700 when the bytes are not JSON).
 *
 * @example
 * ```ts
 * const body = await readJsonBody(req, req.headers['content-length'], { maxBytes: 1 << 20, maxDepth: 64 });
 * ```
 */
export async function readJsonBody(
  stream: AsyncIterable<Uint8Array>,
  contentLength: string | undefined,
  limits: BodyLimits = {},
): Promise<unknown> {
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxDepth = limits.maxDepth ?? DEFAULT_MAX_JSON_DEPTH;
  if (contentLength !== undefined && Number(contentLength) > maxBytes) throw tooLarge(maxBytes);
  const guard = new JsonNestingGuard(maxDepth);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const c of stream) {
    size += c.length;
    if (size > maxBytes) throw tooLarge(maxBytes);
    guard.push(c);
    chunks.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', 'the body is not JSON', {
      jsonRpcCode: JSONRPC_PARSE_ERROR,
    });
  }
}

/**
 * The nesting depth of an already parsed value, walked iteratively and stopped past `max` (for
 * bodies a framework parsed before the verifier ran). Returns true when within `max`.
 *
 * @example
 * ```ts
 * withinDepth(JSON.parse('[[1]]'), 1); // false
 * ```
 */
export function withinDepth(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (d + 1 > max) return false;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, d + 1]);
  }
  return true;
}
