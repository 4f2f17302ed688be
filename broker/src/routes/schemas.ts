// Request and response JSON schemas for every route. Response schemas are a security control:
// fastify serializes only the properties listed here, so nothing else (a stack, a key, a token in
// an unexpected field) can leave the broker.
import { ACTIONS, type Action as ActionT, COMPLETION_STATUSES, MAX_RESOURCE_BYTES } from '@taskpass/contract';
import type { TaskRecord } from '../store/types.ts';

const str = { type: 'string' } as const;
const int = { type: 'integer' } as const;

/** `{ code, message, ... }` error body of the broker API. */
export const ErrorBody = {
  $id: 'BrokerError',
  type: 'object',
  required: ['code', 'message'],
  properties: {
    code: str,
    message: str,
    template: str,
    reason: str,
    // TASKPASS_PDP_DENIED / _UNAVAILABLE: the decision point that said no (docs/policy-engines.md)
    engine: str,
    policy: str,
    issues: {
      type: 'array',
      items: { type: 'object', properties: { path: str, message: str } },
    },
    // TASKPASS_APPROVAL_REQUIRED / _DENIED / _EXPIRED / _ALREADY_DECIDED (docs/approvals.md)
    approval_id: str,
    approval_url: str,
    expires_at: int,
    request: { $ref: 'ApprovalSubject#' },
    comment: str,
    status: str,
  },
} as const;

/** What an approval asks (contract ApprovalSubject). */
export const ApprovalSubjectSchema = {
  $id: 'ApprovalSubject',
  type: 'object',
  required: ['agent', 'user', 'task', 'audience', 'tool', 'resource', 'action', 'args_sha256', 'template'],
  properties: {
    agent: str,
    user: str,
    task: { type: 'object', required: ['id', 'purpose'], properties: { id: str, purpose: str } },
    audience: str,
    tool: str,
    resource: str,
    action: { type: 'string', enum: ACTIONS },
    args_sha256: str,
    arguments: { type: 'object', additionalProperties: true },
    template: str,
  },
} as const;

/** RFC 6749 §5.2 error body (plus our stable `code`). */
export const OAuthErrorBody = {
  $id: 'OAuthError',
  type: 'object',
  required: ['error'],
  properties: {
    error: str,
    error_description: str,
    code: str,
    template: str,
    // Extension members of authorization_pending / access_denied / expired_token (docs/approvals.md)
    approval_id: str,
    approval_url: str,
    expires_at: int,
  },
} as const;

const retryAfter = {
  'retry-after': { type: 'integer', description: 'Seconds until the caller may retry' },
} as const;

/** The answers every limited route can give (OpenAPI documents each; `ref` is the body schema). */
function limitedRoute<R extends string>(ref: R, body: boolean) {
  const $ref = `${ref}#` as const;
  return {
    400: {
      description:
        'Invalid request: wrong JSON types, unknown fields, JSON nested too deep (TASKPASS_BAD_REQUEST)',
      $ref,
    },
    ...(body
      ? {
          413: { description: 'Body larger than this route accepts (TASKPASS_BODY_TOO_LARGE)', $ref },
          415: { description: 'Unsupported content type (TASKPASS_UNSUPPORTED_MEDIA_TYPE)', $ref },
        }
      : {}),
    429: {
      description:
        "Caller's request budget spent (TASKPASS_RATE_LIMITED); Retry-After gives the seconds to the window's reset",
      headers: retryAfter,
      $ref,
    },
    503: {
      description:
        'Store or shared rate limiter unavailable (TASKPASS_STORE_UNAVAILABLE, TASKPASS_RATE_LIMIT_UNAVAILABLE)',
      headers: retryAfter,
      $ref,
    },
    '4xx': { $ref },
    '5xx': { $ref },
  };
}

/** Error answers of routes without a body. */
export const errorResponses = limitedRoute('BrokerError', false);
/** Error answers of routes with a JSON body. */
export const bodyErrorResponses = limitedRoute('BrokerError', true);
/** Error answers of the form-encoded OAuth routes. */
export const oauthErrorResponses = limitedRoute('OAuthError', true);

export const TaskIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' } },
} as const;

const Action = { type: 'string', enum: ACTIONS } as const;

export const Ceiling = {
  type: 'array',
  items: {
    type: 'object',
    required: ['template', 'audience', 'tools'],
    properties: {
      template: str,
      audience: str,
      tools: {
        type: 'array',
        items: {
          type: 'object',
          required: ['tool', 'action', 'resources'],
          properties: {
            tool: str,
            action: Action,
            resources: { type: 'array', items: str },
            bind_arguments: { type: 'boolean', enum: [true] },
            send_arguments: { type: 'boolean', enum: [true] },
            approval: { type: 'boolean', enum: [true] },
          },
        },
      },
    },
  },
} as const;

export const OpenTaskBody = {
  type: 'object',
  required: ['purpose'],
  additionalProperties: false,
  properties: {
    purpose: { type: 'string', minLength: 1, maxLength: 512 },
    user_token: { type: 'string', minLength: 1, maxLength: 16384 },
    ttl_seconds: { type: 'integer', minimum: 1, maximum: 86400 * 7 },
  },
} as const;
export interface OpenTaskBodyT {
  purpose: string;
  user_token?: string;
  ttl_seconds?: number;
}

export const OpenTaskResponse = {
  type: 'object',
  required: ['task_id', 'status', 'expires_at', 'sub', 'agent', 'ceiling'],
  properties: { task_id: str, status: str, expires_at: int, sub: str, agent: str, ceiling: Ceiling },
} as const;

export const TaskView = {
  type: 'object',
  required: ['task_id', 'status', 'agent', 'sub', 'purpose', 'created_at', 'expires_at'],
  properties: {
    task_id: str,
    status: { type: 'string', enum: ['open', 'completed', 'failed', 'cancelled', 'revoked'] },
    agent: str,
    sub: str,
    purpose: str,
    created_at: int,
    expires_at: int,
    finished_at: int,
  },
} as const;

/** A task as {@link TaskView} shows it (GET /v1/tasks/:id and the admin list). */
export function taskView(t: TaskRecord): Record<string, unknown> {
  return {
    task_id: t.id,
    status: t.status,
    agent: t.agent,
    sub: t.sub,
    purpose: t.purpose,
    created_at: t.createdAt,
    expires_at: t.expiresAt,
    ...(t.finishedAt !== undefined ? { finished_at: t.finishedAt } : {}),
  };
}

const Audience = { type: 'string', minLength: 1, maxLength: 2048 } as const;

export const CallTokenBody = {
  type: 'object',
  required: ['audience', 'tool', 'resource', 'action'],
  additionalProperties: false,
  properties: {
    audience: Audience,
    tool: { type: 'string', minLength: 1, maxLength: 256 },
    resource: { type: 'string', minLength: 1, maxLength: MAX_RESOURCE_BYTES },
    action: Action,
    args_sha256: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' },
    arguments: {
      type: 'object',
      description:
        "The call's arguments, for templates whose approval conditions read them; they must hash to args_sha256",
    },
  },
} as const;
export interface CallTokenBodyT {
  audience: string;
  tool: string;
  resource: string;
  action: ActionT;
  args_sha256?: string;
  arguments?: Record<string, unknown>;
}

const epoch = { type: 'integer', description: 'Epoch seconds' } as const;

/** `GET /v1/approvals/:id` (contract ApprovalView). */
export const ApprovalViewSchema = {
  $id: 'ApprovalView',
  type: 'object',
  required: ['id', 'status', 'created_at', 'expires_at', 'approval_url', 'request'],
  properties: {
    id: str,
    status: { type: 'string', enum: ['pending', 'approved', 'denied', 'expired', 'cancelled', 'used'] },
    created_at: epoch,
    expires_at: epoch,
    approval_url: str,
    request: { $ref: 'ApprovalSubject#' },
    decision: {
      type: 'object',
      required: ['decision', 'approver', 'decided_at'],
      properties: {
        decision: { type: 'string', enum: ['approve', 'deny'] },
        approver: { type: 'object', required: ['iss', 'sub'], properties: { iss: str, sub: str } },
        decided_at: epoch,
        comment: str,
      },
    },
  },
} as const;

export const ApprovalIdParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: '^apr_[A-Za-z0-9_-]{22}$' } },
} as const;

export const ApprovalGetQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    wait: {
      type: 'integer',
      minimum: 0,
      maximum: 60,
      description: 'Long poll: answer as soon as the status changes, or after this many seconds',
    },
  },
} as const;

export const ApprovalListQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: ['pending'], default: 'pending' },
    limit: { type: 'integer', minimum: 1, maximum: 500, default: 100 },
  },
} as const;

export const ApprovalListResponse = {
  type: 'object',
  required: ['approvals'],
  properties: { approvals: { type: 'array', items: { $ref: 'ApprovalView#' } } },
} as const;

export const ApprovalDecisionBody = {
  type: 'object',
  required: ['decision'],
  additionalProperties: false,
  properties: {
    decision: { type: 'string', enum: ['approve', 'deny'] },
    comment: { type: 'string', minLength: 1, maxLength: 1000 },
  },
} as const;
export interface ApprovalDecisionBodyT {
  decision: 'approve' | 'deny';
  comment?: string;
}

export const SessionTokenBody = {
  type: 'object',
  required: ['audience'],
  additionalProperties: false,
  properties: { audience: Audience },
} as const;

export const TokenResponse = {
  type: 'object',
  required: ['access_token', 'token_type', 'expires_in', 'expires_at', 'jti', 'single_use', 'template'],
  properties: {
    access_token: str,
    token_type: { type: 'string', enum: ['Bearer'] },
    expires_in: int,
    expires_at: int,
    jti: str,
    single_use: { type: 'boolean' },
    template: str,
  },
} as const;

export const CompleteBody = {
  type: 'object',
  required: ['status'],
  additionalProperties: false,
  properties: { status: { type: 'string', enum: COMPLETION_STATUSES } },
} as const;

export const CompleteResponse = {
  type: 'object',
  required: ['task_id', 'status', 'revocation_seq'],
  properties: { task_id: str, status: str, revocation_seq: int },
} as const;

export const AdminListQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: ['open', 'completed', 'failed', 'cancelled', 'revoked'] },
    agent: { type: 'string', maxLength: 2048 },
    limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
  },
} as const;

export const AdminListResponse = {
  type: 'object',
  required: ['tasks'],
  properties: { tasks: { type: 'array', items: TaskView } },
} as const;

export const AdminRevokeBody = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: { reason: { type: 'string', minLength: 1, maxLength: 256 } },
} as const;

export const Jwks = {
  type: 'object',
  required: ['keys'],
  properties: {
    keys: {
      type: 'array',
      // Only public EC members are listed: a private `d` can never be served.
      items: {
        type: 'object',
        required: ['kty', 'kid'],
        properties: { kty: str, crv: str, x: str, y: str, kid: str, alg: str, use: str },
      },
    },
  },
} as const;

export const AsMetadata = {
  type: 'object',
  required: ['issuer', 'token_endpoint', 'jwks_uri'],
  properties: {
    issuer: str,
    token_endpoint: str,
    introspection_endpoint: str,
    revocation_endpoint: str,
    jwks_uri: str,
    grant_types_supported: { type: 'array', items: str },
    response_types_supported: { type: 'array', items: str },
    token_endpoint_auth_methods_supported: { type: 'array', items: str },
    introspection_endpoint_auth_methods_supported: { type: 'array', items: str },
    revocation_endpoint_auth_methods_supported: { type: 'array', items: str },
    token_endpoint_auth_signing_alg_values_supported: { type: 'array', items: str },
    tls_client_certificate_bound_access_tokens: { type: 'boolean' },
    authorization_details_types_supported: { type: 'array', items: str },
    access_token_signing_alg_values_supported: { type: 'array', items: str },
  },
} as const;

export const TokenExchangeBody = {
  type: 'object',
  required: ['grant_type'],
  properties: {
    grant_type: { type: 'string', maxLength: 256 },
    subject_token: { type: 'string', maxLength: 16384 },
    subject_token_type: { type: 'string', maxLength: 256 },
    actor_token: { type: 'string', maxLength: 16384 },
    actor_token_type: { type: 'string', maxLength: 256 },
    client_assertion: { type: 'string', maxLength: 16384 },
    client_assertion_type: { type: 'string', maxLength: 256 },
    resource: { type: 'string', maxLength: 2048 },
    audience: { type: 'string', maxLength: 2048 },
    authorization_details: { type: 'string', maxLength: 8192 },
    requested_token_type: { type: 'string', maxLength: 256 },
    scope: { type: 'string', maxLength: 1024 },
    task_id: { type: 'string', maxLength: 64 },
    purpose: { type: 'string', maxLength: 512 },
  },
} as const;
export interface TokenExchangeBodyT {
  grant_type: string;
  subject_token?: string;
  subject_token_type?: string;
  actor_token?: string;
  actor_token_type?: string;
  client_assertion?: string;
  client_assertion_type?: string;
  resource?: string;
  audience?: string;
  authorization_details?: string;
  requested_token_type?: string;
  scope?: string;
  task_id?: string;
  purpose?: string;
}

const AuthzDetails = {
  type: 'array',
  items: {
    type: 'object',
    required: ['type'],
    properties: {
      type: str,
      tool: str,
      resource: str,
      action: str,
      args_sha256: str,
      approval: {
        type: 'object',
        properties: {
          id: str,
          approver: { type: 'object', properties: { iss: str, sub: str } },
          approved_at: int,
        },
      },
    },
  },
} as const;

export const TokenExchangeResponse = {
  type: 'object',
  required: ['access_token', 'issued_token_type', 'token_type', 'expires_in'],
  properties: {
    access_token: str,
    issued_token_type: str,
    token_type: str,
    expires_in: int,
    authorization_details: AuthzDetails,
    task_id: str,
  },
} as const;

export const IntrospectBody = {
  type: 'object',
  required: ['token'],
  properties: {
    token: { type: 'string', maxLength: 16384 },
    token_type_hint: { type: 'string', maxLength: 64 },
    consume: { type: 'string', enum: ['true', 'false'] },
  },
} as const;

export const IntrospectResponse = {
  type: 'object',
  required: ['active'],
  properties: {
    active: { type: 'boolean' },
    iss: str,
    sub: str,
    aud: str,
    client_id: str,
    exp: int,
    iat: int,
    jti: str,
    txn: str,
    token_type: str,
    tpl: str,
    single_use: { type: 'boolean' },
    act: { type: 'object', additionalProperties: true },
    cnf: { type: 'object', properties: { 'x5t#S256': str } },
    authorization_details: AuthzDetails,
  },
} as const;

export const RevokeBody = {
  type: 'object',
  required: ['token'],
  properties: {
    token: { type: 'string', maxLength: 16384 },
    token_type_hint: { type: 'string', maxLength: 64 },
  },
} as const;

export const EmptyObject = { type: 'object', properties: {} } as const;

export const Health = { type: 'object', required: ['status'], properties: { status: str } } as const;
export const Ready = {
  type: 'object',
  required: ['status', 'checks'],
  properties: {
    status: { type: 'string', enum: ['ready', 'not_ready'] },
    checks: {
      type: 'object',
      properties: {
        store: { type: 'boolean' },
        policies: { type: 'boolean' },
        svid: { type: 'boolean' },
        keys: { type: 'boolean' },
        vault: { type: 'boolean' },
      },
    },
    /** How the signing keys are kept: `plaintext` only with keys.allowPlaintext; `vault-transit`: in Vault. */
    signing_keys_at_rest: { type: 'string', enum: ['encrypted', 'plaintext', 'vault-transit'] },
    vault: {
      type: 'object',
      description:
        'Vault (when configured): up, sealed or down. Not ready when Vault signs the tokens and is not up; with leases alone it is reported, and only calls needing a credential are refused.',
      properties: {
        state: { type: 'string', enum: ['up', 'sealed', 'down'] },
        reason: { type: 'string' },
      },
    },
    svid: {
      type: 'object',
      description:
        'The X.509-SVID the broker serves: fresh; stale = still valid but the Workload API is down or its rotation is overdue (still ready); expired or missing = not ready.',
      properties: {
        state: { type: 'string', enum: ['fresh', 'stale', 'expired', 'missing'] },
        workloadApi: { type: 'string', enum: ['up', 'down'] },
        expiresAt: { type: 'string', format: 'date-time' },
        expiresInSeconds: { type: 'integer' },
      },
    },
  },
} as const;

/** POST /v1/credentials (contract CredentialRequest). */
export const CredentialBody = {
  type: 'object',
  required: ['subject_token'],
  additionalProperties: false,
  properties: {
    subject_token: { type: 'string', minLength: 1, maxLength: 16384 },
    subject_token_type: { type: 'string', maxLength: 256 },
    path: { type: 'string', minLength: 1, maxLength: 256 },
  },
} as const;

/** The leased secret (contract LeasedCredentialResponse): `data` is passed through as Vault gave it. */
export const CredentialResponse = {
  type: 'object',
  required: ['task_id', 'path', 'lease_id', 'lease_duration', 'expires_at', 'data'],
  properties: {
    task_id: str,
    path: str,
    lease_id: str,
    lease_duration: int,
    expires_at: int,
    data: { type: 'object', additionalProperties: true },
  },
} as const;
