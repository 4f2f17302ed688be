// The revocation feed's wire format (docs/design.md §3-4): the revocation event, the SSE event
// names, and the header by which a client asks for format 2.

/** One revocation, by task or by token. */
export interface Revocation {
  /** Position in the broker's revocation sequence (also the SSE event id). */
  seq: number;
  kind: 'task' | 'token';
  /** Task id or token `jti`. */
  id: string;
  /** Epoch seconds after which no token it covers can still be valid (so it can be forgotten). */
  until: number;
  reason: string;
}

/**
 * Request header by which a client asks for feed format 2 (snapshot in pages). A header rather than
 * a query parameter: brokers that predate it ignore it and answer format 1, which every client reads.
 */
export const FEED_VERSION_HEADER = 'taskpass-feed-version';

/** The feed format this contract describes (value of {@link FEED_VERSION_HEADER}). */
export const FEED_VERSION = '2';

/** SSE event names of `GET /v1/revocations/stream`. */
export const FEED_EVENTS = {
  /** `{ seq, revocations }`: one page of the snapshot; more follow (format 2). */
  snapshotPage: 'snapshot-page',
  /** `{ seq, revocations }`: the (last page of the) snapshot; the feed is complete up to `seq`. */
  snapshot: 'snapshot',
  /** One {@link Revocation}; the event id is its `seq`. */
  revoked: 'revoked',
  /** `{ kids }`: the broker's signing key set changed; refetch the JWKS. */
  keys: 'keys',
  /** `{ seq, now }`: a sign of life. */
  heartbeat: 'heartbeat',
} as const;

/**
 * True when `v` has the fields a verifier acts on (`seq`, `kind`, `id`, `until`); `reason` is
 * informational and not required, so a broker that drops it still revokes.
 *
 * @example
 * ```ts
 * const revocations = body.revocations.filter(isRevocation);
 * ```
 */
export function isRevocation(v: unknown): v is Revocation {
  if (v === null || typeof v !== 'object') return false;
  const r = v as Revocation;
  return (
    Number.isInteger(r.seq) &&
    (r.kind === 'task' || r.kind === 'token') &&
    typeof r.id === 'string' &&
    typeof r.until === 'number'
  );
}
