/** JSON over HTTP(S) with a chosen undici dispatcher (e.g. an mTLS agent holding a workload's SVID). */
import { type Dispatcher, request } from 'undici';

export interface JsonResponse {
  status: number;
  body: Record<string, unknown>;
}

/** Sends `body` (if any) as JSON and parses a JSON answer (`{}` when the answer is empty). */
export async function jsonRequest(
  url: string,
  dispatcher: Dispatcher,
  method: 'GET' | 'POST',
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<JsonResponse> {
  const res = await request(url, {
    method,
    dispatcher,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}
