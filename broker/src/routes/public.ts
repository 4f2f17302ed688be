// Unauthenticated routes: JWKS, RFC 8414 metadata, health, readiness, metrics.
import type { FastifyInstance } from 'fastify';
import type { RouteContext } from './context.ts';
import { AsMetadata, Health, Jwks, Ready } from './schemas.ts';

/** RFC 8414 authorization server metadata for this broker. */
export function authorizationServerMetadata(issuer: string): Record<string, unknown> {
  const base = issuer.replace(/\/$/, '');
  return {
    issuer,
    token_endpoint: `${base}/oauth2/token`,
    introspection_endpoint: `${base}/oauth2/introspect`,
    revocation_endpoint: `${base}/oauth2/revoke`,
    jwks_uri: `${base}/.well-known/jwks.json`,
    grant_types_supported: ['urn:ietf:params:oauth:grant-type:token-exchange'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['tls_client_auth', 'jwt-spiffe'],
    introspection_endpoint_auth_methods_supported: ['tls_client_auth', 'jwt-spiffe'],
    revocation_endpoint_auth_methods_supported: ['tls_client_auth', 'jwt-spiffe'],
    token_endpoint_auth_signing_alg_values_supported: ['ES256', 'ES384', 'RS256', 'PS256'],
    tls_client_certificate_bound_access_tokens: true,
    authorization_details_types_supported: ['mcp_tool_call', 'mcp_session'],
    access_token_signing_alg_values_supported: ['ES256'],
  };
}

/** Registers the public routes. */
export async function publicRoutes(app: FastifyInstance, ctx: RouteContext): Promise<void> {
  app.get(
    '/.well-known/jwks.json',
    {
      schema: {
        summary: 'Public signing keys (current, next, retired-but-unexpired)',
        tags: ['keys'],
        response: { 200: Jwks },
      },
    },
    async (_req, reply) => {
      reply.header('cache-control', `public, max-age=${ctx.config.keys.jwksMaxAge}`);
      return ctx.keys.jwks();
    },
  );

  const metadata = authorizationServerMetadata(ctx.config.issuer);
  app.get(
    '/.well-known/oauth-authorization-server',
    {
      schema: {
        summary: 'RFC 8414 authorization server metadata',
        tags: ['oauth'],
        response: { 200: AsMetadata },
      },
    },
    async () => metadata,
  );

  app.get(
    '/healthz',
    { schema: { summary: 'Liveness', tags: ['ops'], response: { 200: Health } } },
    async () => ({
      status: 'ok',
    }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        summary:
          'Readiness: store reachable, policies loaded, own SVID valid (fresh or stale), signing key available',
        tags: ['ops'],
        response: { 200: Ready, 503: Ready },
      },
    },
    async (req, reply) => {
      const checks = { store: false, policies: false, svid: false, keys: false };
      try {
        await ctx.store.currentSeq();
        checks.store = true;
      } catch (err) {
        req.log.warn({ err }, 'readiness: store unreachable');
      }
      try {
        ctx.policies.current();
        checks.policies = true;
      } catch {}
      // A stale SVID (Workload API down, SVID still valid) is served: the broker stays ready until
      // the SVID expires, and says so. An expired or missing one is not.
      let svid: Record<string, unknown> = { state: 'missing', workloadApi: 'down' };
      try {
        const h = ctx.svidHealth();
        checks.svid = h.svid === 'fresh' || h.svid === 'stale';
        svid = { state: h.svid, workloadApi: h.workloadApi };
        if (h.expiresAt) {
          svid.expiresAt = h.expiresAt.toISOString();
          svid.expiresInSeconds = Math.floor((h.expiresAt.getTime() - Date.now()) / 1000);
        }
      } catch (err) {
        req.log.warn({ err }, 'readiness: SVID health unavailable');
      }
      try {
        checks.keys = ctx.keys.current().kid.length > 0;
      } catch {}
      let ok = checks.store && checks.policies && checks.svid && checks.keys;
      const vault = ctx.vaultHealth ? await ctx.vaultHealth() : undefined;
      if (vault) {
        const up = vault.state === 'up';
        // Transit signs every token: without Vault nothing can be issued.
        if (ctx.config.signing.kind === 'vault-transit') ok &&= up;
        if (!up) req.log.warn({ vault: vault.state, reason: vault.reason }, 'readiness: vault not up');
      }
      const atRest = ctx.keys.protection;
      return reply.code(ok ? 200 : 503).send({
        status: ok ? 'ready' : 'not_ready',
        checks: vault ? { ...checks, vault: vault.state === 'up' } : checks,
        svid,
        ...(atRest ? { signing_keys_at_rest: atRest } : {}),
        ...(vault ? { vault } : {}),
      });
    },
  );

  app.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics',
        tags: ['ops'],
        produces: ['text/plain'],
        response: { 200: { type: 'string' } },
      },
    },
    async (_req, reply) => {
      reply.header('content-type', ctx.metrics.registry.contentType);
      // Several workers: the whole broker's figures, not this worker's share.
      return ctx.metrics.exposition ? ctx.metrics.exposition() : ctx.metrics.registry.metrics();
    },
  );
}
