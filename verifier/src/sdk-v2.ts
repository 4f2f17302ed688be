// Glue to the MCP TypeScript SDK 2.x (@modelcontextprotocol/server, /node, /express): a token
// verifier for its requireBearerAuth / verifyBearerToken. Its own module so that servers on SDK
// 1.x never load the 2.x packages. Per-call checks need the body: mount taskpassMiddleware in
// front of toNodeHandler(createMcpHandler(…)) (it sets req.auth, which 2.x hands handlers as
// ctx.http.authInfo; callerOf reads it).
import {
  type AuthInfo,
  OAuthError,
  OAuthErrorCode,
  type OAuthTokenVerifier,
} from '@modelcontextprotocol/server';
import type { Verifier } from './core.ts';
import { sessionAuthInfo } from './sdk-v1.ts';

/**
 * An `OAuthTokenVerifier` for SDK 2.x `requireBearerAuth` (fetch gate or `@modelcontextprotocol/express`).
 * Like the 1.x one it checks a session-level grant only (it never sees the body). Refusals are
 * 2.x `OAuthError`s — `invalid_token` (401), `insufficient_scope` (403), `server_error` (500):
 * 2.x answers any other error class, the 1.x ones included, with a bare 500.
 *
 * @example
 * ```ts
 * import { requireBearerAuth } from '@modelcontextprotocol/server';
 * import { taskpassTokenVerifier } from '@taskpass/verifier/sdk-v2';
 * const gate = requireBearerAuth({ verifier: taskpassTokenVerifier(verifier), resourceMetadataUrl });
 * ```
 */
export function taskpassTokenVerifier(verifier: Verifier): OAuthTokenVerifier {
  const codes = {
    invalid_token: OAuthErrorCode.InvalidToken,
    insufficient_scope: OAuthErrorCode.InsufficientScope,
    server_error: OAuthErrorCode.ServerError,
  } as const;
  return {
    verifyAccessToken: (token: string): Promise<AuthInfo> =>
      sessionAuthInfo(verifier, token, (refusal, message) => new OAuthError(codes[refusal], message)),
  };
}
