#!/bin/sh
# Bootstraps the Taskpass SPIRE deployment against a running SPIRE server:
#   1. writes the server's trust bundle       -> $BOOTSTRAP_DIR/bundle.pem   (agent trust_bundle_path)
#   2. writes a fresh join token for the agent -> $BOOTSTRAP_DIR/join-token   (agent join_token_file)
#   3. creates or updates one registration entry per workload (idempotent: fixed entry IDs).
#
# docker-compose.yml runs it once per `up` in the spire-setup service (the official SPIRE images
# have no shell). It also works outside Docker (docs/deploy.md):
#   SPIRE_SERVER=~/.cache/taskpass/spire-v1.13.3-*/bin/spire-server \
#   SPIRE_SERVER_SOCKET=/tmp/tp-spire/server.sock BOOTSTRAP_DIR=/tmp/tp-spire/bootstrap \
#   SELECTORS=unix BROKER_UID=$(id -u) sh deploy/spire/register.sh
#
# Environment:
#   SPIRE_SERVER         spire-server binary                (default: spire-server on PATH)
#   SPIRE_SERVER_SOCKET  the server API socket              (default: /tmp/spire-server/private/api.sock)
#   BOOTSTRAP_DIR        where bundle.pem and join-token go (default: /opt/spire/bootstrap)
#   SELECTORS            docker (default): docker:label:org.taskpass.workload:<name>
#                        unix: unix:uid:$<NAME>_UID; workloads without such a variable are skipped
#   JOIN_TOKEN_TTL       seconds the join token stays valid (default: 600)
#
# Flags checked against `spire-server entry create -h` / `entry update -h` of SPIRE v1.13.3.
set -eu

TRUST_DOMAIN=taskpass.local
# The join token's alias: every workload entry hangs off this node ID (`-parentID`).
NODE_ID="spiffe://$TRUST_DOMAIN/node/taskpass-host"

SPIRE_SERVER=${SPIRE_SERVER:-spire-server}
SPIRE_SERVER_SOCKET=${SPIRE_SERVER_SOCKET:-/tmp/spire-server/private/api.sock}
BOOTSTRAP_DIR=${BOOTSTRAP_DIR:-/opt/spire/bootstrap}
SELECTORS=${SELECTORS:-docker}
JOIN_TOKEN_TTL=${JOIN_TOKEN_TTL:-600}

# `spire-server <group> <command> -socketPath ... <flags>`
srv() {
  group=$1
  cmd=$2
  shift 2
  "$SPIRE_SERVER" "$group" "$cmd" -socketPath "$SPIRE_SERVER_SOCKET" "$@"
}

echo "waiting for the SPIRE server at $SPIRE_SERVER_SOCKET"
tries=0
until "$SPIRE_SERVER" healthcheck -socketPath "$SPIRE_SERVER_SOCKET" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "SPIRE server not healthy after 60s" >&2
    exit 1
  fi
  sleep 1
done

mkdir -p "$BOOTSTRAP_DIR"

# 1. Trust bundle for the agent's first connection. Write-then-rename: never a half-written file.
srv bundle show -format pem >"$BOOTSTRAP_DIR/bundle.pem.tmp"
mv "$BOOTSTRAP_DIR/bundle.pem.tmp" "$BOOTSTRAP_DIR/bundle.pem"
echo "wrote $BOOTSTRAP_DIR/bundle.pem"

# 2. Join token. Single use; an agent that already has an SVID in its data_dir ignores it.
token=$(srv token generate -spiffeID "$NODE_ID" -ttl "$JOIN_TOKEN_TTL" | sed -n 's/^Token: *//p')
if [ -z "$token" ]; then
  echo "spire-server token generate printed no token" >&2
  exit 1
fi
(
  umask 077
  printf '%s\n' "$token" >"$BOOTSTRAP_DIR/join-token.tmp"
)
mv "$BOOTSTRAP_DIR/join-token.tmp" "$BOOTSTRAP_DIR/join-token"
echo "wrote $BOOTSTRAP_DIR/join-token (node alias $NODE_ID, valid ${JOIN_TOKEN_TTL}s)"

# 3. entry <entry-id> <spiffe-id> <workload name> [extra entry flags...]
entry() {
  id=$1
  spiffe_id=$2
  name=$3
  shift 3
  case "$SELECTORS" in
    docker) selector="docker:label:org.taskpass.workload:$name" ;;
    unix)
      var=$(printf '%s_UID' "$name" | tr '[:lower:]-' '[:upper:]_')
      uid=$(eval "printf '%s' \"\${$var:-}\"")
      if [ -z "$uid" ]; then
        echo "skip  $spiffe_id ($var not set)"
        return 0
      fi
      selector="unix:uid:$uid"
      ;;
    *)
      echo "SELECTORS must be docker or unix, not $SELECTORS" >&2
      exit 2
      ;;
  esac
  if srv entry show -entryID "$id" >/dev/null 2>&1; then
    srv entry update -entryID "$id" -parentID "$NODE_ID" -spiffeID "$spiffe_id" -selector "$selector" "$@" >/dev/null
    echo "update $spiffe_id <- $selector"
  else
    srv entry create -entryID "$id" -parentID "$NODE_ID" -spiffeID "$spiffe_id" -selector "$selector" "$@" >/dev/null
    echo "create $spiffe_id <- $selector"
  fi
}

# One line per workload; test/compose.test.ts reads these lines and checks them against
# docker-compose.yml (labels), deploy/broker/broker.yaml and policies/.
#     entry ID          SPIFFE ID                                      workload  extra flags
entry taskpass-broker   spiffe://taskpass.local/broker                 broker    -dns broker -dns broker.taskpass.local
entry taskpass-tickets  spiffe://taskpass.local/mcp/tickets            tickets   -dns tickets -dns tickets.taskpass.local
entry taskpass-agent    spiffe://taskpass.local/agents/support/triage-bot agent
entry taskpass-idp      spiffe://taskpass.local/idp                    idp
entry taskpass-admin    spiffe://taskpass.local/ops/admin              admin

echo "SPIRE registration done"
