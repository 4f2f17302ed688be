// One JSON POST to a decision point, bounded by a timeout, that never throws: every way it can go
// wrong (refused connection, timeout, non-2xx, a body that is not JSON) comes back as `problem`,
// which the engine turns into TASKPASS_PDP_UNAVAILABLE. Node's fetch keeps connections alive
// (undici's global dispatcher pools them per origin), so a decision is one round trip.

/** The answer of {@link postJson}: the parsed body of a 2xx answer, or what went wrong. */
export type PostResult = { ok: true; body: unknown } | { ok: false; problem: string };

/** Largest answer read from a decision point (decisions are small; anything bigger is garbage). */
const MAX_ANSWER_BYTES = 256 * 1024;

export async function postJson(
  url: string,
  body: unknown,
  opts: { timeoutMs: number; headers?: Readonly<Record<string, string>>; signal?: AbortSignal | undefined },
): Promise<PostResult> {
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal ? AbortSignal.any([timeout, opts.signal]) : timeout;
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', ...opts.headers },
      body: JSON.stringify(body),
      signal,
      redirect: 'error',
    });
    const text = await res.text();
    if (!res.ok) return { ok: false, problem: `answered HTTP ${res.status}` };
    if (text.length > MAX_ANSWER_BYTES) return { ok: false, problem: 'answered more than 256 KiB' };
    try {
      return { ok: true, body: JSON.parse(text) };
    } catch {
      return { ok: false, problem: 'answered a body that is not JSON' };
    }
  } catch (e) {
    if (timeout.aborted) return { ok: false, problem: `did not answer within ${opts.timeoutMs} ms` };
    if (opts.signal?.aborted) return { ok: false, problem: 'the request was cancelled' };
    const cause = (e as { cause?: { code?: string } }).cause?.code;
    return { ok: false, problem: `is unreachable (${cause ?? (e as Error).message})` };
  }
}
