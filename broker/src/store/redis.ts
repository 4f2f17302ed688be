// The shared store for several broker replicas: one Redis (standalone or Sentinel; not Cluster —
// the scripts touch several keys that would live in different slots).
//
// Durability: a Redis write is on disk before the reply only with AOF and `appendfsync always`.
// Operators must enable both for the broker's "durable before acknowledged" guarantee on
// revocations; init() logs a warning when it can see that they are off.
//
// Layout under the key prefix P (default "taskpass:"):
//   P task:<id>            hash (TTL: expiry + retention)     P tasks / P tasks:exp  zsets of ids
//   P issued:<task>        list of JSON calls (same TTL as the task)
//   P icount:<task>        hash <template, tool> -> calls issued (same TTL)
//   P iprior:<task>        hash <resource, tool> -> JSON array of the templates that issued one
//                          (both for workflow decisions without reading the list; fields are
//                          length-prefixed pairs built in Lua, see ISSUED_HELPERS)
//   P seq                  last revocation seq (INCR; never reset, never reused)
//   P revs                 zset seq -> seq                     P revs:until  zset until -> seq
//   P revdata              hash seq -> JSON revocation
//   P revoked:<kind>:<id>  seq (expires with what it covers)   P used:<jti>  single-use marker
//   P keys                 hash kid -> JSON signing key
//   channel P revocations  every revocation, as JSON, published by the script that made it
//   P apr:<id>             hash: data (the request, JSON, immutable), status, expiresAt,
//                          decidedAt, approver (JSON), comment, usedAt, jti (TTL: the task's)
//   P aprcall:<sha256>     the id of the approval a call currently has (key = digest of task,
//                          audience, tool, resource, action, args_sha256; TTL: the task's)
//   P tapr:<task>          set of the task's approval ids (its completion cancels them)
//   P apr:pending          zset id -> expiresAt of pending approvals (approvers' lists)
//   channel P approvals    the id of every approval whose status changed
//   P dec:head             hash seq, hash: the decision chain's last record
//   P dec:anchor           hash seq, hash: the last swept record (the first remaining links to it)
//   P dec:rec              hash seq -> the record as stored (JSON, hashed)
//   P dec:time             zset seq -> at (ms): retention sweep
//   P dec:task:<task>      zset seq -> seq: a task's timeline (TTL: the retention)
//   P dec:cnt:<minute>     hash count key -> records that minute (TTL: the retention)
//   P csess:<id>           a console session or sign-in state, JSON (TTL: its expiry)
//   P lease                hash [task, path] (JSON) -> JSON lease record (no TTL: a record lives until
//                          Vault confirmed its revocation)     P lease:due  zset [task, path] -> dueAt
//   P lease:ending         zset [task, path] -> dueAt of the leases `revoking` (a subset of lease:due)
//   P tlease:<task>        set of the task's lease keys (its end marks them due; TTL: the task's)
// The approval scripts reach P apr:<id> by ids read inside the script (keys not declared in KEYS):
// fine on one Redis, one more reason this store is not for Cluster.
//
// Outages (docs/decisions.md, "A frozen or dead Redis"): every command is bounded by `timeoutMs`,
// nothing is queued while the connection is down, and every Store method then rejects with
// TASKPASS_STORE_UNAVAILABLE. A command already written to a frozen Redis runs when it resumes,
// after the caller answered 503; so each mutating script carries a deadline in Redis time and
// changes nothing once it has passed (a late `complete` is a no-op, the 503 stays the truth).
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Redis, type RedisOptions, ReplyError } from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError } from '../errors.ts';
import type { ApprovalStatus, ApproverRef, Revocation } from '@taskpass/contract';
import {
  type ApprovalDecisionInput,
  approvalCallKey,
  type ApprovalRecord,
  REVOCATION_GRACE_SEC,
  type ChainHead,
  type ClosingStatus,
  type ConsoleSessionRecord,
  type DecisionFilter,
  type DecisionInput,
  type DecisionRecord,
  GENESIS_HASH,
  type IssuedCall,
  type LeaseRecord,
  leaseKey,
  type NewLease,
  type Store,
  type StoredSigningKey,
  type TaskRecord,
  type TaskStatus,
} from './types.ts';
import { chainAfter, countKeyOf, outcomeOf } from '../decision-chain.ts';
import { mapStoreFailures } from './unavailable.ts';

/** Options of {@link RedisStore}. */
export interface RedisStoreOptions {
  /** `redis://[user:pass@]host:port[/db]` or `rediss://...`. */
  url: string;
  /** Prefix of every key and of the pub/sub channel. Default `"taskpass:"`. */
  prefix?: string;
  logger?: Logger;
  /** Seconds a task is kept after it expired (see SqliteStoreOptions). Default 300. */
  taskRetentionSec?: number;
  /** Most entries one sweep step removes (default 500; see SqliteStoreOptions.sweepBatchRows). */
  sweepBatchRows?: number;
  /** Extra ioredis options (tests, TLS). */

  /**
   * Bound of every Redis call, in ms: a command without a reply by then fails (503), the silent
   * connection is dropped and re-opened, and so is a connection attempt. Default 2000.
   */
  timeoutMs?: number;
  /** Our clock, epoch ms, against which Redis' is measured (tests). Default `Date.now`. */
  now?: () => number;
  /** Seconds decision records are kept (`audit.retention`). Default 30 days. */
  decisionRetentionSec?: number;
  /** Extra ioredis options (TLS, retryStrategy...); the time bounds and queueing ones are fixed. */
  redisOptions?: RedisOptions;
}

// Prepended to every mutating script; its caller appends the deadline (ms, Redis clock) as the last
// ARGV. A script that runs later — Redis was frozen with it in its socket, or too slow — changes
// nothing and answers an error. TIME before writes needs effects replication (Redis >= 5).
const LATE = 'TASKPASS_LATE';
const withDeadline = (body: string): string => `
local deadline = tonumber(table.remove(ARGV))
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then
  return redis.error_reply('${LATE} the caller gave up before this ran; nothing was changed')
end
${body}`;

// Every script is atomic in Redis: a revocation's seq, its entries and the task status change are
// one step, so a reader never sees a seq without its revocation (no gaps to wait for).
const CREATE_TASK = withDeadline(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1`);

// KEYS: task, seq, revs, revs:until, revdata, revoked marker
// ARGV: status, at, reason, channel, id, retention, prefix, approvals channel
// KEYS also: 7 the task's approval set, 8 the pending zset. The task's pending or approved approvals
// are cancelled in the same step (returned as the 4th element). 9 tlease:<task>, 10 lease, 11 lease:due,
// 12 lease:ending:
// the task's Vault leases become due for revocation in the same step.
const FINISH_TASK = withDeadline(`
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st ~= 'open' then
  local s = redis.call('HGET', KEYS[1], 'revSeq') or '0'
  local j = redis.call('HGET', KEYS[5], s) or ''
  return {'already', s, j}
end
local exp = tonumber(redis.call('HGET', KEYS[1], 'expiresAt'))
local seq = redis.call('INCR', KEYS[2])
local json = cjson.encode({seq = seq, kind = 'task', id = ARGV[5], ['until'] = exp, reason = ARGV[3]})
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finishedAt', ARGV[2], 'revSeq', seq)
redis.call('ZADD', KEYS[3], seq, seq)
redis.call('ZADD', KEYS[4], exp, seq)
redis.call('HSET', KEYS[5], seq, json)
redis.call('SET', KEYS[6], seq)
redis.call('EXPIREAT', KEYS[6], exp + tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[4], json)
local cancelled = {}
for _, aid in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  local k = ARGV[7] .. 'apr:' .. aid
  local st = redis.call('HGET', k, 'status')
  if st == 'pending' or st == 'approved' then
    redis.call('HSET', k, 'status', 'cancelled')
    redis.call('ZREM', KEYS[8], aid)
    redis.call('PUBLISH', ARGV[8], aid)
    cancelled[#cancelled + 1] = aid
  end
end
-- The revocation outbox: the task's Vault leases are due for revocation from its end.
for _, lk in ipairs(redis.call('SMEMBERS', KEYS[9])) do
  local j = redis.call('HGET', KEYS[10], lk)
  if j then
    local l = cjson.decode(j)
    l.state = 'revoking'
    if tonumber(ARGV[2]) < l.dueAt then l.dueAt = tonumber(ARGV[2]) end
    redis.call('HSET', KEYS[10], lk, cjson.encode(l))
    redis.call('ZADD', KEYS[11], l.dueAt, lk)
    redis.call('ZADD', KEYS[12], l.dueAt, lk)
  end
end
return {'ok', tostring(seq), json, cancelled}`);

// KEYS: task, lease, lease:due, tlease:<task>
// ARGV: lease key, the new lease (JSON), now, retention
const RECORD_LEASE = withDeadline(`
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
local exp = tonumber(redis.call('HGET', KEYS[1], 'expiresAt'))
local existing = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if st ~= 'open' or exp <= tonumber(ARGV[3]) then return {'closed', existing} end
if existing ~= '' and cjson.decode(existing).expiresAt > tonumber(ARGV[3]) then
  return {'exists', existing}
end
local l = cjson.decode(ARGV[2])
l.state = 'active'
l.dueAt = exp
l.attempts = 0
local j = cjson.encode(l)
redis.call('HSET', KEYS[2], ARGV[1], j)
redis.call('ZADD', KEYS[3], exp, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('EXPIREAT', KEYS[4], exp + tonumber(ARGV[4]))
return {'ok', j}`);

// KEYS: lease, lease:due, lease:ending. ARGV: lease key, lease id, 'revoked' | 'retry', retryAt
// Only while the record still holds that lease id (a later lease on the path is left alone).
const SETTLE_LEASE = withDeadline(`
local j = redis.call('HGET', KEYS[1], ARGV[1])
if not j then return 0 end
local l = cjson.decode(j)
if l.leaseId ~= ARGV[2] then return 0 end
if ARGV[3] == 'revoked' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  l.state = 'revoking'
  l.dueAt = tonumber(ARGV[4])
  l.attempts = l.attempts + 1
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(l))
  redis.call('ZADD', KEYS[2], l.dueAt, ARGV[1])
  redis.call('ZADD', KEYS[3], l.dueAt, ARGV[1])
end
return 1`);

// KEYS: seq, revs, revs:until, revdata, revoked marker
// ARGV: jti, until, reason, channel, retention
const REVOKE_TOKEN = withDeadline(`
local seq = redis.call('INCR', KEYS[1])
local u = tonumber(ARGV[2])
local json = cjson.encode({seq = seq, kind = 'token', id = ARGV[1], ['until'] = u, reason = ARGV[3]})
redis.call('ZADD', KEYS[2], seq, seq)
redis.call('ZADD', KEYS[3], u, seq)
redis.call('HSET', KEYS[4], seq, json)
redis.call('SET', KEYS[5], seq)
redis.call('EXPIREAT', KEYS[5], u + tonumber(ARGV[5]))
redis.call('PUBLISH', ARGV[4], json)
return json`);

// Shared by the issued-call scripts. KEYS of each: 1 the issued list, 2 icount, 3 iprior.
// A field is the length-prefixed pair `#a:a..b`, unambiguous whatever the strings hold.
const ISSUED_HELPERS = `
local function field(a, b) return #a .. ':' .. a .. b end
local function split(f)
  local n, rest = string.match(f, '^(%d+):(.*)$')
  n = tonumber(n)
  return string.sub(rest, 1, n), string.sub(rest, n + 1)
end
local function add(counts, prior, tpl, tool, res)
  redis.call('HINCRBY', counts, field(tpl, tool), 1)
  local f = field(res, tool)
  local v = redis.call('HGET', prior, f)
  local list = {}
  if v then list = cjson.decode(v) end
  for _, t in ipairs(list) do if t == tpl then return end end
  list[#list + 1] = tpl
  redis.call('HSET', prior, f, cjson.encode(list))
end
-- A task whose calls were recorded before icount/iprior existed: built once from its list, so an
-- upgrade in the middle of a task does not reset its call budget.
local function ensure(list, counts, prior)
  if redis.call('EXISTS', counts) == 1 then return end
  local all = redis.call('LRANGE', list, 0, -1)
  if #all == 0 then return end
  for _, j in ipairs(all) do
    local c = cjson.decode(j)
    add(counts, prior, c.template, c.tool, c.resource)
  end
  local ttl = redis.call('PTTL', list)
  if ttl > 0 then
    redis.call('PEXPIRE', counts, ttl)
    redis.call('PEXPIRE', prior, ttl)
  end
end
`;

// KEYS: issued, icount, iprior, task, [approval]; ARGV: json, expireAt (fallback), template, tool,
// resource, ifToolCount ('' for none: with it, nothing is written and 0 returned unless the task has
// exactly that many calls of tool), approval id ('' for none: with it, nothing is written and 0
// returned unless that approval is approved and not expired at now; it becomes used), now, jti,
// approvals channel.
// The issued-call keys must live as long as their task, or per-task call limits would reset.
const RECORD_ISSUED = withDeadline(`${ISSUED_HELPERS}
local consume = ARGV[7] ~= ''
if consume then
  local st = redis.call('HGET', KEYS[5], 'status')
  local exp = tonumber(redis.call('HGET', KEYS[5], 'expiresAt') or '0')
  if st ~= 'approved' or exp <= tonumber(ARGV[8]) then return 0 end
end
ensure(KEYS[1], KEYS[2], KEYS[3])
if ARGV[6] ~= '' then
  local total = 0
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local _, tool = split(all[i])
    if tool == ARGV[4] then total = total + tonumber(all[i + 1]) end
  end
  if total ~= tonumber(ARGV[6]) then return 0 end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
add(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
local ttl = redis.call('PTTL', KEYS[4])
for i = 1, 3 do
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('EXPIREAT', KEYS[i], ARGV[2]) end
end
if consume then
  redis.call('HSET', KEYS[5], 'status', 'used', 'usedAt', ARGV[8], 'jti', ARGV[9])
  redis.call('PUBLISH', ARGV[10], ARGV[7])
end
return 1`);

// KEYS: the call's aprcall key, task, the task's approval set, pending zset, the new approval's hash
// ARGV: id, data (JSON), expiresAt, now, prefix, approvals channel
// Returns {'created'|'existing'|'expired', id} or {'closed'} / {'missing'} for the task.
const REQUEST_APPROVAL = withDeadline(`
local tst = redis.call('HGET', KEYS[2], 'status')
if not tst then return {'missing'} end
if tst ~= 'open' then return {'closed'} end
local cur = redis.call('GET', KEYS[1])
if cur then
  local k = ARGV[5] .. 'apr:' .. cur
  local st = redis.call('HGET', k, 'status')
  if st then
    local open = st == 'pending' or st == 'approved'
    local exp = tonumber(redis.call('HGET', k, 'expiresAt'))
    if (open and exp > tonumber(ARGV[4])) or st == 'denied' then return {'existing', cur} end
    if open then
      redis.call('HSET', k, 'status', 'expired')
      redis.call('DEL', KEYS[1])
      redis.call('ZREM', KEYS[4], cur)
      redis.call('PUBLISH', ARGV[6], cur)
      return {'expired', cur}
    end
  end
end
local ttl = redis.call('PTTL', KEYS[2])
if ttl <= 0 then ttl = 3600000 end
redis.call('HSET', KEYS[5], 'data', ARGV[2], 'status', 'pending', 'expiresAt', ARGV[3])
redis.call('PEXPIRE', KEYS[5], ttl)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return {'created', ARGV[1]}`);

// KEYS: the approval's hash, pending zset; ARGV: id, status, decidedAt, approver JSON, comment
// ('' for none), now, approvals channel. First decision wins: only a pending, unexpired approval.
const DECIDE_APPROVAL = withDeadline(`
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
local exp = tonumber(redis.call('HGET', KEYS[1], 'expiresAt'))
if st ~= 'pending' or exp <= tonumber(ARGV[6]) then return 'lost' end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'decidedAt', ARGV[3], 'approver', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'comment', ARGV[5]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[7], ARGV[1])
return 'ok'`);

// ARGV: tool. Returns template, count, template, count, ...
const COUNT_ISSUED = `${ISSUED_HELPERS}
ensure(KEYS[1], KEYS[2], KEYS[3])
local out = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local tpl, tool = split(all[i])
  if tool == ARGV[1] then
    out[#out + 1] = tpl
    out[#out + 1] = all[i + 1]
  end
end
return out`;

// ARGV: tool, resource. Returns the templates that issued a call of tool on resource.
const ISSUED_TEMPLATES_ON = `${ISSUED_HELPERS}
ensure(KEYS[1], KEYS[2], KEYS[3])
local v = redis.call('HGET', KEYS[3], field(ARGV[2], ARGV[1]))
if not v then return {} end
return cjson.decode(v)`;

// KEYS: revs, revs:until, revdata; ARGV: now, batch. At most `batch` revocations per call: a
// script blocks Redis for every client while it runs, so a large backlog is dropped in many calls.
const SWEEP_REVOCATIONS = `
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, s in ipairs(old) do
  redis.call('ZREM', KEYS[1], s)
  redis.call('ZREM', KEYS[2], s)
  redis.call('HDEL', KEYS[3], s)
end
return #old`;

// KEYS: keys hash; ARGV: kid, json, activeAfter ('' = any stored key blocks the save)
const ADD_KEY_IF_LATEST = withDeadline(`
local after = tonumber(ARGV[3])
for _, j in ipairs(redis.call('HVALS', KEYS[1])) do
  if not after or cjson.decode(j).activeFrom > after then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1`);

// KEYS: used marker; ARGV: ttl ms. SET NX as a script only to carry the deadline: a jti marked
// used after the caller was told 503 would spend a token nobody used.
const MARK_USED = withDeadline(`
return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'NX')`);

// KEYS: dec:head, dec:rec, dec:time, dec:anchor
// ARGV: prefix, ttl (s), expected head seq, expected head hash, new head seq, new head hash, then
// per record: seq, at, task ('' none), count key ('' none), json.
// A compare-and-set on the head: a replica that appended first makes this one rechain and retry.
const APPEND_DECISIONS = withDeadline(`
local h = redis.call('HMGET', KEYS[1], 'seq', 'hash')
local seq, hash = h[1], h[2]
if not seq then
  local a = redis.call('HMGET', KEYS[4], 'seq', 'hash')
  seq = a[1] or '0'
  hash = a[2] or '${GENESIS_HASH}'
end
if seq ~= ARGV[3] or hash ~= ARGV[4] then return {'moved', seq, hash} end
for i = 7, #ARGV, 5 do
  local s, at, task, ck = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  redis.call('HSET', KEYS[2], s, ARGV[i + 4])
  redis.call('ZADD', KEYS[3], at, s)
  if task ~= '' then
    local tk = ARGV[1] .. 'dec:task:' .. task
    redis.call('ZADD', tk, s, s)
    redis.call('EXPIRE', tk, ARGV[2])
  end
  if ck ~= '' then
    local bk = ARGV[1] .. 'dec:cnt:' .. math.floor(tonumber(at) / 60000)
    redis.call('HINCRBY', bk, ck, 1)
    redis.call('EXPIRE', bk, ARGV[2])
  end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[5], 'hash', ARGV[6])
return {'ok'}`);

// KEYS: dec:anchor, dec:rec, dec:time; ARGV: expected anchor seq, new anchor seq, its hash.
// Drops records (anchor, new anchor] and moves the anchor, in one step; a no-op when another
// replica swept them first.
const SWEEP_DECISIONS = `
local cur = redis.call('HGET', KEYS[1], 'seq') or '0'
if cur ~= ARGV[1] then return 0 end
local from, to = tonumber(cur) + 1, tonumber(ARGV[2])
for s = from, to do
  redis.call('HDEL', KEYS[2], s)
  redis.call('ZREM', KEYS[3], s)
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'hash', ARGV[3])
return to - from + 1`;

// KEYS: the session key. GET and DEL in one step: a sign-in state is used once.
const TAKE = `
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v`;

const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex');

// Replies that mean "Redis cannot serve this now", not "this request or our code is wrong".
const UNAVAILABLE_REPLY =
  /^(TASKPASS_LATE|LOADING|BUSY|READONLY|MISCONF|OOM|MASTERDOWN|NOREPLICAS|TRYAGAIN|CLUSTERDOWN|NOAUTH|WRONGPASS|NOPERM)\b/;

/**
 * What a failed Redis call becomes: TASKPASS_STORE_UNAVAILABLE (503) for an outage — timeout,
 * connection refused or reset, no connection, a late script, a Redis that is loading, read-only or
 * out of memory; our own errors and programming errors (script bugs, TypeError...) pass unchanged.
 */
function storeFailure(e: unknown): unknown {
  if (e instanceof BrokerError) return e;
  const bug =
    e instanceof ReplyError
      ? !UNAVAILABLE_REPLY.test((e as Error).message)
      : e instanceof TypeError ||
        e instanceof SyntaxError ||
        e instanceof RangeError ||
        e instanceof ReferenceError;
  if (bug) return e;
  return new BrokerError(
    'TASKPASS_STORE_UNAVAILABLE',
    'the store did not answer in time or cannot be reached; nothing was acknowledged',
    undefined,
    { cause: e },
  );
}

function parseRevocation(json: string): Revocation | undefined {
  try {
    const o = JSON.parse(json) as Partial<Revocation>;
    if (
      typeof o.seq === 'number' &&
      (o.kind === 'task' || o.kind === 'token') &&
      typeof o.id === 'string' &&
      typeof o.until === 'number' &&
      typeof o.reason === 'string'
    ) {
      return { seq: o.seq, kind: o.kind, id: o.id, until: o.until, reason: o.reason };
    }
  } catch {
    // falls through: not a revocation
  }
  return undefined;
}

/** An approval from its hash: the immutable request plus the fields that change. */
function approvalFromHash(h: Record<string, string>): ApprovalRecord | undefined {
  if (!h.data) return undefined;
  const a = JSON.parse(h.data) as ApprovalRecord;
  a.status = (h.status ?? 'pending') as ApprovalStatus;
  a.expiresAt = Number(h.expiresAt);
  if (h.decidedAt !== undefined) a.decidedAt = Number(h.decidedAt);
  if (h.approver !== undefined) a.approver = JSON.parse(h.approver) as ApproverRef;
  if (h.comment !== undefined) a.comment = h.comment;
  if (h.usedAt !== undefined) a.usedAt = Number(h.usedAt);
  if (h.jti !== undefined) a.jti = h.jti;
  return a;
}

function taskFromHash(h: Record<string, string>): TaskRecord | undefined {
  if (!h.id) return undefined;
  const t: TaskRecord = {
    id: h.id,
    agent: h.agent ?? '',
    sub: h.sub ?? '',
    purpose: h.purpose ?? '',
    status: (h.status ?? 'open') as TaskStatus,
    createdAt: Number(h.createdAt),
    expiresAt: Number(h.expiresAt),
  };
  if (h.userIssuer !== undefined) t.userIssuer = h.userIssuer;
  if (h.userClaims !== undefined) t.userClaims = JSON.parse(h.userClaims) as Record<string, unknown>;
  if (h.finishedAt !== undefined) t.finishedAt = Number(h.finishedAt);
  return t;
}

function parseLease(json: string | null | undefined): LeaseRecord | undefined {
  if (!json) return undefined;
  const l = JSON.parse(json) as LeaseRecord;
  return {
    taskId: l.taskId,
    path: l.path,
    leaseId: l.leaseId,
    issuedAt: l.issuedAt,
    expiresAt: l.expiresAt,
    state: l.state,
    dueAt: l.dueAt,
    attempts: l.attempts,
  };
}

/** {@link Store} on Redis (ioredis), shared by several broker replicas. */
export class RedisStore implements Store {
  readonly prefix: string;
  readonly #url: string;
  readonly #logger: Logger | undefined;
  readonly #retention: number;
  readonly #decisionRetention: number;
  readonly #batchRows: number;

  readonly #timeoutMs: number;
  readonly #now: () => number;
  readonly #redisOptions: RedisOptions;
  readonly #events = new EventEmitter();
  #redis: Redis | undefined;
  #sub: Redis | undefined;
  #init: Promise<void> | undefined;
  // Revocations reach listeners in seq order, once each, with gaps filled from the store.
  #lastEmitted = 0;
  #chain: Promise<void> = Promise.resolve();
  // Redis' clock minus ours (ms), measured on every (re)connection: deadlines are written in Redis
  // time, so a skewed broker clock neither voids every write nor lets a late one through.
  #skewMs = 0;

  constructor(opts: RedisStoreOptions) {
    this.#url = opts.url;
    this.prefix = opts.prefix ?? 'taskpass:';
    this.#logger = opts.logger;
    this.#retention = opts.taskRetentionSec ?? 300;
    this.#decisionRetention = opts.decisionRetentionSec ?? 30 * 86400;
    this.#batchRows = Math.max(1, Math.floor(opts.sweepBatchRows ?? 500));

    this.#timeoutMs = opts.timeoutMs ?? 2000;
    this.#now = opts.now ?? Date.now;
    this.#redisOptions = opts.redisOptions ?? {};
    this.#events.setMaxListeners(0);
  }

  #k(...parts: string[]): string {
    return this.prefix + parts.join(':');
  }
  get #channel(): string {
    return this.#k('revocations');
  }
  get #approvalChannel(): string {
    return this.#k('approvals');
  }
  get #r(): Redis {
    if (!this.#redis) throw new Error('RedisStore: init() has not been called (or the store is closed)');
    return this.#redis;
  }

  init(): Promise<void> {
    this.#init ??= this.#doInit().catch(async (e: unknown) => {
      this.#init = undefined;
      await this.close();
      throw e;
    });
    return this.#init;
  }

  async #doInit(): Promise<void> {
    const t = this.#timeoutMs;
    const options: RedisOptions = {
      retryStrategy: (n: number) => Math.min(50 * 2 ** n, 1000),
      ...this.#redisOptions,
      lazyConnect: true,
      // Not overridable. No call waits longer than t, and nothing is held to be sent later: while
      // the connection is down a command fails at once (the caller answers 503); one written to a
      // silent socket fails after t and the socket is dropped (a frozen Redis, a vanished host);
      // nothing is re-sent on reconnect, since its outcome is unknown (mutating scripts carry a
      // deadline instead).
      commandTimeout: t,
      socketTimeout: t,
      connectTimeout: t,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
    };
    const redis = new Redis(this.#url, options);
    redis.on('error', (err: Error) =>
      this.#logger?.warn({ err: err.message }, 'redis store connection error'),
    );
    let connected = false;
    redis.on('ready', () => {
      if (!connected) return; // the first connection is measured below, before any write
      void this.#measureSkew(redis);
      // Revocations published while we were away were lost to the subscriber too: read them back.
      if (this.#sub) this.#enqueue(() => this.#catchUp());
    });
    this.#redis = redis;
    await redis.connect();
    connected = true;
    await this.#measureSkew(redis);
    await this.#checkDurability(redis);

    // Deliveries wait until the starting seq is known (set below).
    let open: () => void = () => {};
    this.#chain = new Promise<void>((resolve) => {
      open = resolve;
    });
    const sub = redis.duplicate();
    sub.on('error', (err: Error) => this.#logger?.warn({ err: err.message }, 'redis feed connection error'));
    this.#sub = sub;
    sub.on('message', (channel: string, message: string) => {
      if (channel === this.#approvalChannel) {
        this.#approvalChanged(message);
        return;
      }
      if (channel !== this.#channel) return;
      const r = parseRevocation(message);
      if (r) this.#enqueue(() => this.#deliver(r));
    });
    let first = true;
    sub.on('ready', () => {
      // After a reconnect, messages published while we were away are lost: read them back.
      if (!first) this.#enqueue(() => this.#catchUp());
      first = false;
    });
    await sub.connect();
    await sub.subscribe(this.#channel, this.#approvalChannel);
    // Subscribed first, then the starting point: everything after it arrives on the channel.
    try {
      this.#lastEmitted = await this.currentSeq();
    } finally {
      open();
    }
  }

  // The sample with the shortest round trip, which bounds its error: a busy event loop (start-up,
  // schema compilation) that delays a reply would otherwise pass for skew and void every deadline.
  async #measureSkew(redis: Redis): Promise<void> {
    let best: { rtt: number; skew: number } | undefined;
    try {
      for (let i = 0; i < 3; i++) {
        const before = this.#now();
        const [sec, usec] = (await redis.time()) as [string | number, string | number];
        const after = this.#now();
        const skew = Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - (before + after) / 2;
        if (!best || after - before < best.rtt) best = { rtt: after - before, skew };
      }
    } catch {
      // A connection that cannot answer TIME fails the writes anyway.
    }
    // Too coarse to trust: keep the last measure (0 at first: same host or NTP).
    if (!best || best.rtt > this.#timeoutMs / 8) return;
    this.#skewMs = best.skew;
    if (Math.abs(best.skew) > this.#timeoutMs / 4) {
      this.#logger?.warn({ skewMs: Math.round(best.skew) }, 'redis clock differs from ours');
    }
  }

  async #checkDurability(redis: Redis): Promise<void> {
    try {
      const aof = (await redis.call('CONFIG', 'GET', 'appendonly')) as string[];
      const fsync = (await redis.call('CONFIG', 'GET', 'appendfsync')) as string[];
      if (aof[1] !== 'yes' || fsync[1] !== 'always') {
        this.#logger?.warn(
          { appendonly: aof[1], appendfsync: fsync[1] },
          'redis is not configured with appendonly yes + appendfsync always: an acknowledged revocation may be lost if Redis crashes',
        );
      }
    } catch (err) {
      this.#logger?.warn(
        { err: err instanceof Error ? err.message : String(err) },
        'cannot read the redis persistence settings (CONFIG disabled?); make sure appendonly yes and appendfsync always are set',
      );
    }
  }

  #enqueue(step: () => Promise<void>): void {
    this.#chain = this.#chain.then(step).catch((err: unknown) => {
      this.#logger?.error({ err }, 'redis revocation feed: delivery failed');
    });
  }

  // Our own revocations do not depend on the subscriber connection being up; the channel copy
  // that follows is dropped as a repeat.
  #deliverLocal(r: Revocation): void {
    if (this.#sub) this.#enqueue(() => this.#deliver(r));
  }

  async #deliver(r: Revocation): Promise<void> {
    if (r.seq <= this.#lastEmitted) return;
    if (r.seq > this.#lastEmitted + 1) await this.#catchUp(r.seq - 1);
    this.#emit(r);
  }

  async #catchUp(upTo = Number.POSITIVE_INFINITY): Promise<void> {
    if (!this.#redis) return;
    // now = 0: everything still stored, even if expired, so that nothing is skipped silently.
    for (const m of await this.revocationsSince(this.#lastEmitted, 0)) {
      if (m.seq > upTo) break;
      this.#emit(m);
    }
  }

  #emit(r: Revocation): void {
    if (r.seq <= this.#lastEmitted) return;
    this.#lastEmitted = r.seq;
    try {
      this.#events.emit('revocation', r);
    } catch (err) {
      this.#logger?.error({ err, seq: r.seq }, 'revocation listener threw');
    }
  }

  async close(): Promise<void> {
    const { a, b } = { a: this.#sub, b: this.#redis };
    this.#sub = undefined;
    this.#redis = undefined;
    this.#init = undefined;
    await Promise.all(
      [a, b].map(async (c) => {
        if (!c) return;
        try {
          await c.quit();
        } catch {
          c.disconnect();
        }
      }),
    );
  }

  /**
   * Runs a {@link withDeadline} script. It may change something only within the first half of the
   * call's time bound (in Redis time), so that its reply has the second half to come back: a caller
   * answered 503 on a timeout can count on the change not happening later. (A reply lost after the
   * script ran is the one case where a 503 hides a change; every mutation here is safe to retry.)
   */
  #mutate(lua: string, keys: string[], args: (string | number)[]): Promise<unknown> {
    const deadline = Math.floor(this.#now() + this.#skewMs + this.#timeoutMs / 2);
    return this.#script(lua, keys, [...args, deadline]);
  }

  // EVALSHA with a fallback to EVAL: the script cache is lost when Redis restarts.
  async #script(lua: string, keys: string[], args: (string | number)[]): Promise<unknown> {
    const r = this.#r;
    try {
      return await r.evalsha(sha1(lua), keys.length, ...keys, ...args);
    } catch (e) {
      if (e instanceof Error && e.message.startsWith('NOSCRIPT'))
        return r.eval(lua, keys.length, ...keys, ...args);
      throw e;
    }
  }

  async createTask(task: TaskRecord): Promise<void> {
    const fields: string[] = [
      'id',
      task.id,
      'agent',
      task.agent,
      'sub',
      task.sub,
      'purpose',
      task.purpose,
      'status',
      task.status,
      'createdAt',
      String(task.createdAt),
      'expiresAt',
      String(task.expiresAt),
    ];
    if (task.userIssuer !== undefined) fields.push('userIssuer', task.userIssuer);
    if (task.userClaims !== undefined) fields.push('userClaims', JSON.stringify(task.userClaims));
    if (task.finishedAt !== undefined) fields.push('finishedAt', String(task.finishedAt));
    const created = await this.#mutate(
      CREATE_TASK,
      [this.#k('task', task.id), this.#k('tasks'), this.#k('tasks', 'exp')],
      [task.id, task.createdAt, task.expiresAt + this.#retention, ...fields],
    );
    if (created !== 1) throw new Error(`task ${task.id} already exists`);
  }

  async getTask(id: string): Promise<TaskRecord | undefined> {
    return taskFromHash(await this.#r.hgetall(this.#k('task', id)));
  }

  async listTasks(
    filter: { status?: TaskStatus; agent?: string; limit?: number } = {},
  ): Promise<TaskRecord[]> {
    const limit = Math.max(0, Math.floor(filter.limit ?? 100));
    const out: TaskRecord[] = [];
    const batch = 200;
    for (let start = 0; out.length < limit; start += batch) {
      const ids = await this.#r.zrevrange(this.#k('tasks'), start, start + batch - 1);
      if (ids.length === 0) break;
      const p = this.#r.pipeline();
      for (const id of ids) p.hgetall(this.#k('task', id));
      const res = (await p.exec()) ?? [];
      for (const [err, h] of res) {
        if (err) throw err;
        const t = taskFromHash(h as Record<string, string>);
        if (!t) continue; // expired by TTL; sweep removes the id from the index
        if (filter.status && t.status !== filter.status) continue;
        if (filter.agent && t.agent !== filter.agent) continue;
        out.push(t);
        if (out.length >= limit) break;
      }
    }
    return out;
  }

  async completeTask(
    id: string,
    status: ClosingStatus,
    at: number,
    reason: string,
  ): Promise<{
    task: TaskRecord;
    revocation: Revocation;
    alreadyCompleted: boolean;
    cancelledApprovals: string[];
  }> {
    const res = (await this.#mutate(
      FINISH_TASK,
      [
        this.#k('task', id),
        this.#k('seq'),
        this.#k('revs'),
        this.#k('revs', 'until'),
        this.#k('revdata'),
        this.#k('revoked', 'task', id),
        this.#k('tapr', id),
        this.#k('apr', 'pending'),
        this.#k('tlease', id),
        this.#k('lease'),
        this.#k('lease', 'due'),
        this.#k('lease', 'ending'),
      ],
      [status, at, reason, this.#channel, id, this.#retention, this.prefix, this.#approvalChannel],
    )) as [string, string?, string?, string[]?];
    if (res[0] === 'missing') throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${id}`);
    const task = await this.getTask(id);
    if (!task) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${id}`);
    let revocation = parseRevocation(res[2] ?? '');
    // An earlier revocation may have been swept (its `until` passed); it covered nothing any more.
    revocation ??= { seq: Number(res[1]), kind: 'task', id, until: task.expiresAt, reason: task.status };
    if (res[0] === 'ok') this.#deliverLocal(revocation);
    return {
      task,
      revocation,
      alreadyCompleted: res[0] === 'already',
      cancelledApprovals: res[0] === 'ok' ? (res[3] ?? []) : [],
    };
  }

  #approvalChanged(id: string): void {
    try {
      this.#events.emit('approval', id);
    } catch (err) {
      this.#logger?.error({ err, approval: id }, 'approval listener threw');
    }
  }

  async requestApproval(
    a: ApprovalRecord,
    now: number,
  ): Promise<{ approval: ApprovalRecord; created: boolean }> {
    const callKey = createHash('sha256').update(approvalCallKey(a)).digest('base64url');
    const { status: _status, expiresAt: _exp, ...request } = a;
    const [outcome, id] = (await this.#mutate(
      REQUEST_APPROVAL,
      [
        this.#k('aprcall', callKey),
        this.#k('task', a.taskId),
        this.#k('tapr', a.taskId),
        this.#k('apr', 'pending'),
        this.#k('apr', a.id),
      ],
      [a.id, JSON.stringify(request), a.expiresAt, now, this.prefix, this.#approvalChannel],
    )) as [string, string?];
    if (outcome === 'missing') throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${a.taskId}`);
    if (outcome === 'closed') {
      throw new BrokerError('TASKPASS_TASK_CLOSED', `task ${a.taskId} is closed; its tokens are revoked`);
    }
    const approval = await this.getApproval(id!);
    if (!approval) throw new Error(`approval ${id} vanished`);
    return { approval, created: outcome === 'created' };
  }

  async getApproval(id: string): Promise<ApprovalRecord | undefined> {
    return approvalFromHash(await this.#r.hgetall(this.#k('apr', id)));
  }

  async decideApproval(
    id: string,
    d: ApprovalDecisionInput,
    now: number,
  ): Promise<{ decided: boolean; approval: ApprovalRecord } | undefined> {
    const outcome = await this.#mutate(
      DECIDE_APPROVAL,
      [this.#k('apr', id), this.#k('apr', 'pending')],
      [id, d.status, d.decidedAt, JSON.stringify(d.approver), d.comment ?? '', now, this.#approvalChannel],
    );
    if (outcome === 'missing') return undefined;
    const approval = await this.getApproval(id);
    if (!approval) return undefined;
    return { decided: outcome === 'ok', approval };
  }

  async listPendingApprovals(now: number, limit: number): Promise<ApprovalRecord[]> {
    const ids = await this.#r.zrangebyscore(
      this.#k('apr', 'pending'),
      `(${now}`,
      '+inf',
      'LIMIT',
      0,
      Math.max(0, Math.floor(limit)),
    );
    if (!ids.length) return [];
    const p = this.#r.pipeline();
    for (const id of ids) p.hgetall(this.#k('apr', id));
    const out: ApprovalRecord[] = [];
    for (const [err, h] of (await p.exec()) ?? []) {
      if (err) throw err;
      const a = approvalFromHash(h as Record<string, string>);
      if (a?.status === 'pending' && a.expiresAt > now) out.push(a);
    }
    return out;
  }

  onApprovalChange(listener: (id: string) => void): () => void {
    this.#events.on('approval', listener);
    return () => {
      this.#events.off('approval', listener);
    };
  }

  #issuedKeys(taskId: string): string[] {
    return [this.#k('issued', taskId), this.#k('icount', taskId), this.#k('iprior', taskId)];
  }

  async recordIssued(
    call: IssuedCall,
    opts: { ifToolCount?: number; consumeApproval?: { id: string; now: number } } = {},
  ): Promise<boolean> {
    const consume = opts.consumeApproval;
    const recorded = await this.#mutate(
      RECORD_ISSUED,
      [
        ...this.#issuedKeys(call.taskId),
        this.#k('task', call.taskId),
        ...(consume ? [this.#k('apr', consume.id)] : []),
      ],
      [
        JSON.stringify(call),
        call.expiresAt + this.#retention,
        call.template,
        call.tool,
        call.resource,
        opts.ifToolCount === undefined ? '' : String(opts.ifToolCount),
        consume?.id ?? '',
        consume?.now ?? 0,
        call.jti,
        this.#approvalChannel,
      ],
    );
    return Number(recorded) === 1;
  }

  async countIssued(taskId: string, tool: string): Promise<Map<string, number>> {
    const flat = (await this.#script(COUNT_ISSUED, this.#issuedKeys(taskId), [tool])) as string[];
    const out = new Map<string, number>();
    for (let i = 0; i + 1 < flat.length; i += 2) out.set(flat[i]!, Number(flat[i + 1]));
    return out;
  }

  async issuedTemplates(taskId: string, tool: string, resource?: string): Promise<Set<string>> {
    if (resource === undefined) return new Set((await this.countIssued(taskId, tool)).keys());
    const templates = (await this.#script(ISSUED_TEMPLATES_ON, this.#issuedKeys(taskId), [
      tool,
      resource,
    ])) as string[];
    return new Set(templates);
  }

  async listIssued(taskId: string): Promise<IssuedCall[]> {
    return (await this.#r.lrange(this.#k('issued', taskId), 0, -1)).map((j) => JSON.parse(j) as IssuedCall);
  }

  // ---- Vault leases and their revocation outbox ----

  async recordLease(
    l: NewLease,
    now: number,
  ): Promise<{ recorded: boolean; lease: LeaseRecord | undefined }> {
    const res = (await this.#mutate(
      RECORD_LEASE,
      [this.#k('task', l.taskId), this.#k('lease'), this.#k('lease', 'due'), this.#k('tlease', l.taskId)],
      [leaseKey(l), JSON.stringify(l), now, this.#retention],
    )) as [string, string?];
    if (res[0] === 'missing') throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${l.taskId}`);
    return { recorded: res[0] === 'ok', lease: parseLease(res[1]) };
  }

  async getLease(taskId: string, path: string): Promise<LeaseRecord | undefined> {
    return parseLease(await this.#r.hget(this.#k('lease'), leaseKey({ taskId, path })));
  }

  async dueLeases(now: number, limit: number): Promise<LeaseRecord[]> {
    const keys = await this.#r.zrangebyscore(this.#k('lease', 'due'), '-inf', now, 'LIMIT', 0, limit);
    if (keys.length === 0) return [];
    const rows = await this.#r.hmget(this.#k('lease'), ...keys);
    return rows.map(parseLease).filter((l): l is LeaseRecord => l !== undefined);
  }

  async countDueLeases(now: number): Promise<number> {
    // Due now, plus the `revoking` ones (a subset of the due zset) waiting for a later attempt.
    const res = await this.#r
      .multi()
      .zcount(this.#k('lease', 'due'), '-inf', now)
      .zcount(this.#k('lease', 'ending'), `(${now}`, '+inf')
      .exec();
    let n = 0;
    for (const [err, count] of res ?? []) {
      if (err) throw err;
      n += Number(count);
    }
    return n;
  }

  async leaseRevoked(taskId: string, path: string, leaseId: string): Promise<void> {
    await this.#settleLease(taskId, path, leaseId, 'revoked', 0);
  }

  async leaseRetry(taskId: string, path: string, leaseId: string, retryAt: number): Promise<void> {
    await this.#settleLease(taskId, path, leaseId, 'retry', retryAt);
  }

  #settleLease(
    taskId: string,
    path: string,
    leaseId: string,
    how: string,
    retryAt: number,
  ): Promise<unknown> {
    return this.#mutate(
      SETTLE_LEASE,
      [this.#k('lease'), this.#k('lease', 'due'), this.#k('lease', 'ending')],
      [leaseKey({ taskId, path }), leaseId, how, retryAt],
    );
  }

  async revokeToken(jti: string, until: number, reason: string): Promise<Revocation> {
    const json = (await this.#mutate(
      REVOKE_TOKEN,
      [
        this.#k('seq'),
        this.#k('revs'),
        this.#k('revs', 'until'),
        this.#k('revdata'),
        this.#k('revoked', 'token', jti),
      ],
      [jti, until, reason, this.#channel, this.#retention],
    )) as string;
    const r = parseRevocation(json);
    if (!r) throw new Error('redis returned a malformed revocation');
    this.#deliverLocal(r);
    return r;
  }

  async revocationsSince(since: number, now: number): Promise<Revocation[]> {
    const seqs = await this.#r.zrangebyscore(this.#k('revs'), `(${since}`, '+inf');
    if (seqs.length === 0) return [];
    const out: Revocation[] = [];
    for (let i = 0; i < seqs.length; i += 1000) {
      const chunk = seqs.slice(i, i + 1000);
      const jsons = await this.#r.hmget(this.#k('revdata'), ...chunk);
      for (const j of jsons) {
        const r = j === null ? undefined : parseRevocation(j);
        if (r && r.until > now) out.push(r);
      }
    }
    return out.sort((a, b) => a.seq - b.seq);
  }

  async revocationsPage(
    after: number,
    now: number,
    limit: number,
  ): Promise<{ revocations: Revocation[]; next: number | undefined }> {
    const seqs = await this.#r.zrangebyscore(this.#k('revs'), `(${after}`, '+inf', 'LIMIT', 0, limit);
    const last = seqs.at(-1);
    if (last === undefined) return { revocations: [], next: undefined };
    const out: Revocation[] = [];
    for (const j of await this.#r.hmget(this.#k('revdata'), ...seqs)) {
      const r = j === null ? undefined : parseRevocation(j);
      if (r && r.until > now) out.push(r);
    }
    out.sort((a, b) => a.seq - b.seq);
    return { revocations: out, next: seqs.length < limit ? undefined : Number(last) };
  }

  async currentSeq(): Promise<number> {
    return Number((await this.#r.get(this.#k('seq'))) ?? 0);
  }

  async isRevoked(kind: 'task' | 'token', id: string): Promise<boolean> {
    if ((await this.#r.exists(this.#k('revoked', kind, id))) === 1) return true;
    if (kind === 'task') {
      const st = await this.#r.hget(this.#k('task', id), 'status');
      return st !== null && st !== 'open';
    }
    return false;
  }

  async markUsed(jti: string, until: number): Promise<boolean> {
    // A minute beyond `until` absorbs clock differences between the replicas and Redis.
    const ttlMs = Math.max(60_000, until * 1000 - Date.now() + 60_000);
    return (await this.#mutate(MARK_USED, [this.#k('used', jti)], [ttlMs])) === 'OK';
  }

  async loadSigningKeys(): Promise<StoredSigningKey[]> {
    const all = await this.#r.hgetall(this.#k('keys'));
    return Object.values(all).map((j) => JSON.parse(j) as StoredSigningKey);
  }

  async saveSigningKey(key: StoredSigningKey): Promise<void> {
    await this.#r.hset(this.#k('keys'), key.kid, JSON.stringify(key));
  }

  async addSigningKeyIfLatest(key: StoredSigningKey, activeAfter: number | undefined): Promise<boolean> {
    const saved = await this.#mutate(
      ADD_KEY_IF_LATEST,
      [this.#k('keys')],
      [key.kid, JSON.stringify(key), activeAfter === undefined ? '' : activeAfter],
    );
    return saved === 1;
  }

  async deleteSigningKey(kid: string): Promise<void> {
    await this.#r.hdel(this.#k('keys'), kid);
  }

  // ---- decision records ----

  #decKeys(): string[] {
    return [this.#k('dec', 'head'), this.#k('dec', 'rec'), this.#k('dec', 'time'), this.#k('dec', 'anchor')];
  }

  async appendDecisions(inputs: readonly DecisionInput[]): Promise<DecisionRecord[]> {
    if (inputs.length === 0) return [];
    let head = await this.decisionHead();
    // Bounded: each retry means another replica appended; one of them always wins.
    for (let attempt = 0; attempt < 20; attempt++) {
      const records = chainAfter(head, inputs);
      const last = records.at(-1);
      if (!last) return [];
      const args: (string | number)[] = [
        this.prefix,
        this.#decisionRetention,
        head.seq,
        head.hash,
        last.seq,
        last.hash,
      ];
      for (const r of records) {
        args.push(
          r.seq,
          r.at,
          typeof r.task === 'string' ? r.task : '',
          countKeyOf(r) ?? '',
          JSON.stringify(r),
        );
      }
      const res = (await this.#mutate(APPEND_DECISIONS, this.#decKeys(), args)) as string[];
      if (res[0] === 'ok') return records;
      head = { seq: Number(res[1]), hash: String(res[2]) };
    }
    throw new BrokerError(
      'TASKPASS_STORE_UNAVAILABLE',
      'the decision chain moved on every attempt; try again',
    );
  }

  async decisionHead(): Promise<ChainHead> {
    const [seq, hash] = await this.#r.hmget(this.#k('dec', 'head'), 'seq', 'hash');
    if (!seq || !hash) return this.decisionAnchor();
    return { seq: Number(seq), hash };
  }

  async decisionAnchor(): Promise<ChainHead> {
    const [seq, hash] = await this.#r.hmget(this.#k('dec', 'anchor'), 'seq', 'hash');
    return { seq: Number(seq ?? 0), hash: hash || GENESIS_HASH };
  }

  async #records(seqs: readonly (string | number)[]): Promise<DecisionRecord[]> {
    if (seqs.length === 0) return [];
    const out: DecisionRecord[] = [];
    for (const j of await this.#r.hmget(this.#k('dec', 'rec'), ...seqs.map(String))) {
      if (j !== null) out.push(JSON.parse(j) as DecisionRecord);
    }
    return out;
  }

  async decisionsRange(after: number, limit: number): Promise<DecisionRecord[]> {
    const seqs = Array.from({ length: Math.max(0, limit) }, (_, i) => after + 1 + i);
    return this.#records(seqs);
  }

  async decisionsOfTask(taskId: string, limit: number): Promise<DecisionRecord[]> {
    const seqs = await this.#r.zrange(this.#k('dec', 'task', taskId), '0', String(Math.max(1, limit) - 1));
    return this.#records(seqs);
  }

  async recentDecisions(f: DecisionFilter): Promise<{ records: DecisionRecord[]; next: number | undefined }> {
    const limit = Math.max(1, Math.min(500, Math.floor(f.limit ?? 50)));
    const match = (r: DecisionRecord) =>
      (f.agent === undefined || r.agent === f.agent) &&
      (f.user === undefined || r.user === f.user) &&
      (f.task === undefined || r.task === f.task) &&
      (f.code === undefined || r.code === f.code) &&
      (f.outcome === undefined || outcomeOf(r.event) === f.outcome);
    // Newest first from below `before`, at most SCAN records per page: a rare filter returns a
    // short page with `next`, never a long blocking walk.
    const SCAN = 5000;
    const anchor = await this.decisionAnchor();
    let top = (await this.decisionHead()).seq;
    if (f.before !== undefined) top = Math.min(top, f.before - 1);
    const out: DecisionRecord[] = [];
    let lowest = top + 1;
    while (out.length < limit && lowest > anchor.seq + 1 && top - lowest + 1 < SCAN) {
      const hi = lowest - 1;
      const lo = Math.max(anchor.seq + 1, hi - 199);
      const recs = await this.#records(Array.from({ length: hi - lo + 1 }, (_, i) => hi - i));
      lowest = lo;
      for (const r of recs) {
        if (!match(r)) continue;
        out.push(r);
        if (out.length === limit) {
          lowest = r.seq;
          break;
        }
      }
    }
    return { records: out, next: lowest > anchor.seq + 1 ? lowest : undefined };
  }

  async decisionCounts(fromMs: number, toMs: number): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const { counts } of await this.decisionCountsByMinute(fromMs, toMs)) {
      for (const [k, n] of Object.entries(counts)) out[k] = (out[k] ?? 0) + n;
    }
    return out;
  }

  async decisionCountsByMinute(
    fromMs: number,
    toMs: number,
  ): Promise<{ minute: number; counts: Record<string, number> }[]> {
    // Per whole minute (the buckets the append script keeps), at most the retention.
    const first = Math.max(
      Math.floor(fromMs / 60000),
      Math.floor(toMs / 60000) - this.#decisionRetention / 60,
    );
    const last = Math.floor((toMs - 1) / 60000);
    const p = this.#r.pipeline();
    for (let m = first; m <= last; m++) p.hgetall(this.#k('dec', 'cnt', String(m)));
    const out: { minute: number; counts: Record<string, number> }[] = [];
    let m = first;
    for (const [err, h] of (await p.exec()) ?? []) {
      if (err) throw err;
      const entries = Object.entries(h as Record<string, string>);
      if (entries.length)
        out.push({ minute: m, counts: Object.fromEntries(entries.map(([k, v]) => [k, Number(v)])) });
      m++;
    }
    return out;
  }

  async sweepDecisions(beforeMs: number): Promise<number> {
    const anchor = await this.decisionAnchor();
    const head = await this.decisionHead();
    // The oldest records in seq order, up to the first one still within the retention.
    let upTo: DecisionRecord | undefined;
    const recs = await this.decisionsRange(anchor.seq, Math.min(this.#batchRows, head.seq - anchor.seq));
    for (const r of recs) {
      if (r.at >= beforeMs) break;
      upTo = r;
    }
    if (!upTo) return 0;
    return Number(
      await this.#script(
        SWEEP_DECISIONS,
        [this.#k('dec', 'anchor'), this.#k('dec', 'rec'), this.#k('dec', 'time')],
        [anchor.seq, upTo.seq, upTo.hash],
      ),
    );
  }

  async putConsoleSession(r: ConsoleSessionRecord): Promise<void> {
    const ttlMs = Math.max(1000, r.expiresAt * 1000 - Date.now());
    await this.#r.set(this.#k('csess', r.id), JSON.stringify(r), 'PX', ttlMs);
  }

  #session(json: string | null, now: number): ConsoleSessionRecord | undefined {
    if (json === null) return undefined;
    const r = JSON.parse(json) as ConsoleSessionRecord;
    return r.expiresAt > now ? r : undefined;
  }

  async getConsoleSession(id: string, now: number): Promise<ConsoleSessionRecord | undefined> {
    return this.#session(await this.#r.get(this.#k('csess', id)), now);
  }

  async takeConsoleSession(id: string, now: number): Promise<ConsoleSessionRecord | undefined> {
    return this.#session((await this.#script(TAKE, [this.#k('csess', id)], [])) as string | null, now);
  }

  async deleteConsoleSession(id: string): Promise<void> {
    await this.#r.del(this.#k('csess', id));
  }

  onRevocation(listener: (r: Revocation) => void): () => void {
    this.#events.on('revocation', listener);
    return () => {
      this.#events.off('revocation', listener);
    };
  }

  /**
   * Drops revocations past `until` and the index entries of tasks expired for longer than the
   * retention, in steps of at most `sweepBatchRows` (one short script or MULTI each), so neither
   * Redis nor this process is held by a large backlog. The task, issued-call, revoked: and used:
   * keys carry their own TTLs (task expiry + retention, `until` + margin): Redis expires them even
   * when no sweep runs; the sweep only removes what has no TTL (the zsets and revdata).
   */
  async sweep(now: number): Promise<void> {
    const r = this.#r;
    const n = this.#batchRows;
    const revKeys = [this.#k('revs'), this.#k('revs', 'until'), this.#k('revdata')];
    for (let more = true; more; ) {
      more = Number(await this.#script(SWEEP_REVOCATIONS, revKeys, [now - REVOCATION_GRACE_SEC, n])) === n;
    }
    const decisionsBefore = (now - this.#decisionRetention) * 1000;
    while ((await this.sweepDecisions(decisionsBefore)) > 0) {}
    // Approvals that expired pending leave the approvers' list (their hashes expire with the task).
    await r.zremrangebyscore(this.#k('apr', 'pending'), '-inf', now);
    // Scored by expiry + retention (see CREATE_TASK).
    for (;;) {
      const ids = await r.zrangebyscore(this.#k('tasks', 'exp'), '-inf', now, 'LIMIT', 0, n);
      if (ids.length === 0) break;
      const p = r.multi();
      for (const id of ids) p.del(this.#k('task', id), this.#k('tapr', id), ...this.#issuedKeys(id));
      p.zrem(this.#k('tasks'), ...ids);
      p.zrem(this.#k('tasks', 'exp'), ...ids);
      await p.exec();
      if (ids.length < n) break;
    }
  }
}

// Every Store method — those added later too — rejects as TASKPASS_STORE_UNAVAILABLE when Redis
// cannot serve it (see storeFailure): mapped here once, so that no route has to and none answers
// 500 for an outage.
mapStoreFailures(RedisStore.prototype, storeFailure);
