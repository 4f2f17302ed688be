// The decision records' hash chain (docs/decisions.md "Decision records, chained by hash"): each
// record carries `seq`, the previous record's hash and its own, SHA-256 over the canonical JSON of
// every other field. Shared by the stores (which append atomically), the recorder and
// `taskpass audit verify`.
import { createHash } from 'node:crypto';
import { canonicalJson } from '@taskpass/contract';
import type { ChainHead, DecisionInput, DecisionRecord, DecisionStore } from './store/types.ts';

export type { DecisionInput };

/** Events that issued a token (the `allowed` filter; counted as `issued`). */
export const ALLOWED_EVENTS: ReadonlySet<string> = new Set(['token.issued', 'session.issued']);
/** Events that refused a token or a task (the `denied` filter). */
export const DENIED_EVENTS: ReadonlySet<string> = new Set(['token.denied', 'task.denied']);

/** allowed | denied for decisions on tokens and tasks; undefined for the other events. */
export function outcomeOf(event: string): 'allowed' | 'denied' | undefined {
  if (ALLOWED_EVENTS.has(event)) return 'allowed';
  if (DENIED_EVENTS.has(event)) return 'denied';
  return undefined;
}

/** What a record counts as in {@link DecisionStore.decisionCounts}: its code, or `issued`. */
export function countKeyOf(r: { event: string; code?: unknown }): string | undefined {
  if (typeof r.code === 'string') return r.code;
  return ALLOWED_EVENTS.has(r.event) ? 'issued' : undefined;
}

/** SHA-256 (hex) of the canonical JSON of the record without its `hash`. */
export function recordHash(r: Omit<DecisionRecord, 'hash'> | DecisionRecord): string {
  const { hash: _hash, ...rest } = r as DecisionRecord;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
}

/** Chains `inputs` after `head`. */
export function chainAfter(head: ChainHead, inputs: readonly DecisionInput[]): DecisionRecord[] {
  let prev = head;
  return inputs.map((input) => {
    const body = { ...input, seq: prev.seq + 1, prev_hash: prev.hash } as Omit<DecisionRecord, 'hash'>;
    const rec = { ...body, hash: recordHash(body) } as DecisionRecord;
    prev = { seq: rec.seq, hash: rec.hash };
    return rec;
  });
}

/** The outcome of {@link verifyChain}. */
export type ChainVerdict =
  | { ok: true; count: number; first: number | undefined; last: ChainHead }
  | { ok: false; seq: number; problem: string; checked: number };

/**
 * Walks the chain from `from` (default: the first record after the anchor) to `to` (default: the
 * head) and reports the first broken link: a record whose content does not hash to its `hash`, a
 * `prev_hash` that is not the previous record's hash, a missing record, or a head that points past
 * the last record.
 */
export async function verifyChain(
  store: DecisionStore,
  opts: { from?: number | undefined; to?: number | undefined; pageSize?: number } = {},
): Promise<ChainVerdict> {
  const anchor = await store.decisionAnchor();
  const head = await store.decisionHead();
  const pageSize = Math.max(1, opts.pageSize ?? 500);
  const from = Math.max(opts.from ?? anchor.seq + 1, anchor.seq + 1);
  const to = Math.min(opts.to ?? head.seq, head.seq);
  let prev: ChainHead;
  if (from === anchor.seq + 1) prev = anchor;
  else {
    const [before] = await store.decisionsRange(from - 2, 1);
    if (!before || before.seq !== from - 1) {
      return { ok: false, seq: from - 1, problem: `record ${from - 1} is missing`, checked: 0 };
    }
    prev = { seq: before.seq, hash: before.hash };
  }
  let checked = 0;
  for (let after = from - 1; after < to; ) {
    const page = await store.decisionsRange(after, Math.min(pageSize, to - after));
    let i = 0;
    for (let seq = after + 1; seq <= Math.min(after + pageSize, to); seq++) {
      const rec = page[i];
      if (!rec || rec.seq !== seq) {
        const next = rec ? ` (the next record is ${rec.seq})` : '';
        return { ok: false, seq, problem: `record ${seq} is missing${next}`, checked };
      }
      i++;
      const computed = recordHash(rec);
      if (computed !== rec.hash) {
        return {
          ok: false,
          seq,
          problem: `record ${seq} was altered: its content hashes to ${computed}, it says ${rec.hash}`,
          checked,
        };
      }
      if (rec.prev_hash !== prev.hash) {
        return {
          ok: false,
          seq,
          problem: `record ${seq} does not link to record ${prev.seq}: prev_hash ${rec.prev_hash}, record ${prev.seq} hashes to ${prev.hash}`,
          checked,
        };
      }
      prev = { seq, hash: rec.hash };
      checked++;
    }
    after += pageSize;
  }
  if (opts.to === undefined && to === head.seq && prev.hash !== head.hash) {
    return {
      ok: false,
      seq: head.seq,
      problem: `the chain head says record ${head.seq} hashes to ${head.hash}, the last record hashes to ${prev.hash}`,
      checked,
    };
  }
  return { ok: true, count: checked, first: checked ? from : undefined, last: prev };
}
