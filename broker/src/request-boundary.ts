// The request boundary: what a body or query string must look like before any handler, validator or
// JSON parser spends time on it. Authentication runs earlier still (onRequest hooks of each scope),
// so none of this is reachable by an unauthenticated caller except the token-exchange form, which
// carries its client credential inside the body and is therefore bounded by size alone.
import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import { BrokerError } from './errors.ts';

/**
 * The deepest JSON a body may nest. Every broker body is one flat object (depth 1); the headroom is
 * for fields added later. Refused before JSON.parse, so a megabyte of `[` costs one linear scan.
 */
export const MAX_JSON_DEPTH = 8;

/**
 * Per-route body limits in bytes, from the largest body the route's schema admits (string
 * maxLengths, as UTF-8, plus field names). A larger body cannot be valid, so it is refused from
 * its Content-Length or after that many bytes, never read to the end. The configured `bodyLimit`
 * caps them all.
 */
export const BODY_LIMITS = {
  /** purpose ≤ 512 chars, user_token ≤ 16 KiB. */
  openTask: 20 * 1024,
  /** audience ≤ 2 KiB, tool, resource, action, args_sha256, and the call's arguments (≤ ~32 KiB). */
  callToken: 40 * 1024,
  /** An approval decision: decision and a comment ≤ 1000 characters. */
  approvalDecision: 8 * 1024,
  /** audience only; complete: status only; admin revoke: reason ≤ 256 chars. */
  small: 4 * 1024,
  /** subject_token and actor credential ≤ 16 KiB each, authorization_details ≤ 8 KiB (form-encoded). */
  tokenExchange: 40 * 1024,
  /** token ≤ 16 KiB and a hint. */
  introspection: 20 * 1024,
} as const;

/** A route's body limit: its own, capped by the configured ceiling. */
export const bodyLimit = (config: { bodyLimit: number }, route: number): number =>
  Math.min(route, config.bodyLimit);

/**
 * Does `text` nest arrays/objects deeper than `max`? Brackets inside strings do not count. Stops at
 * the first bracket past the limit. Malformed JSON is left for the parser to refuse.
 */
export function jsonNestsDeeperThan(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > max) return true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
  }
  return false;
}

/**
 * Replaces fastify's application/json parser with one that refuses bodies nested deeper than
 * {@link MAX_JSON_DEPTH} before parsing, then parses exactly as fastify does (`__proto__` and
 * `constructor.prototype` keys refused).
 */
export function installDepthLimitedJsonParser(app: FastifyInstance): void {
  const parse = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (jsonNestsDeeperThan(body as string, MAX_JSON_DEPTH)) {
      done(
        new BrokerError('TASKPASS_BAD_REQUEST', `JSON nested deeper than ${MAX_JSON_DEPTH} levels`),
        undefined,
      );
      return;
    }
    parse(req, body as string, done);
  });
}

const DECIMAL = /^(0|[1-9][0-9]{0,14})$/;

/**
 * Query strings are text: a value becomes an integer only if it is a plain decimal (`^(0|[1-9][0-9]*)$`,
 * at most 15 digits), a boolean only if it is `true` or `false`. Anything else stays a string and
 * fails the schema. Runs as a preValidation hook, with Ajv's type coercion turned off (ajv would
 * read `0x10`, ` 1`, `1e3` and `[1]` as numbers).
 */
export function strictQueryTypes(req: FastifyRequest): void {
  const schema = req.routeOptions.schema?.querystring as
    | { properties?: Record<string, { type?: unknown }> }
    | undefined;
  const q = req.query as Record<string, unknown> | null;
  if (!schema?.properties || !q || typeof q !== 'object') return;
  for (const [name, prop] of Object.entries(schema.properties)) {
    const v = q[name];
    if (typeof v !== 'string') continue;
    if (prop.type === 'integer' && DECIMAL.test(v)) q[name] = Number(v);
    else if (prop.type === 'boolean' && (v === 'true' || v === 'false')) q[name] = v === 'true';
  }
}

/**
 * The stable code of a fastify client error (body too large, wrong content type, malformed JSON …):
 * 413 and 415 keep their own codes, every other 4xx is a bad request.
 */
export function fastifyClientError(err: FastifyError):
  | {
      status: number;
      code: 'TASKPASS_BAD_REQUEST' | 'TASKPASS_BODY_TOO_LARGE' | 'TASKPASS_UNSUPPORTED_MEDIA_TYPE';
    }
  | undefined {
  const s = err.statusCode;
  if (typeof s !== 'number' || s < 400 || s >= 500 || !err.code?.startsWith('FST_')) return undefined;
  if (s === 413) return { status: 413, code: 'TASKPASS_BODY_TOO_LARGE' };
  if (s === 415) return { status: 415, code: 'TASKPASS_UNSUPPORTED_MEDIA_TYPE' };
  return { status: 400, code: 'TASKPASS_BAD_REQUEST' };
}
