#!/usr/bin/env bash
# Runs the whole suite (npm ci, npm test, npm run demo) under another Node install, in a throwaway
# clone, so the checkout you work in keeps its node_modules (better-sqlite3 is a native addon built
# for one Node ABI; `npm ci` in your checkout would rebuild it for the other one).
#
#   scripts/test-node-versions.sh NODE_DIR [NODE_DIR...]
#
# NODE_DIR is a Node install prefix with bin/node and include/node (the headers better-sqlite3
# compiles against when no prebuilt binary can be fetched), e.g. an unpacked official tarball.
# Each one is run in turn (never in parallel: the integration tests start real SPIRE and want the
# CPU) in a fresh `git clone` of the committed HEAD of this repository. Uncommitted changes are not
# tested. Logs go to $TASKPASS_NODEVER_LOGS (default: a temp dir, printed at the end).
#
# Environment: TASKPASS_NODEVER_CLONE_ROOT (default /tmp) is where clones go, as
# <root>/n<major>-clone; TASKPASS_NODEVER_KEEP=1 keeps the clone afterwards.
# Exit code: 0 when every step passed under every NODE_DIR.
set -uo pipefail

if [ $# -eq 0 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
clone_root="${TASKPASS_NODEVER_CLONE_ROOT:-/tmp}"
logs="${TASKPASS_NODEVER_LOGS:-$(mktemp -d -t taskpass-nodever-logs.XXXXXX)}"
mkdir -p "$logs"
overall=0
summary=()

# One step: runs "$@" with output to $log, records status and seconds.
run_step() {
  local label="$1" log="$2"
  shift 2
  local t0=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  local secs=$((SECONDS - t0))
  printf '   %-10s rc=%s  %4ss  (%s)\n' "$label" "$rc" "$secs" "$log"
  return $rc
}

for nodedir in "$@"; do
  nodedir="$(cd "$nodedir" && pwd)" || { overall=1; continue; }
  if [ ! -x "$nodedir/bin/node" ] || [ ! -f "$nodedir/include/node/node.h" ]; then
    echo "!! $nodedir: needs bin/node and include/node/node.h" >&2
    overall=1
    continue
  fi
  version="$("$nodedir/bin/node" --version)"
  major="${version#v}"
  major="${major%%.*}"
  clone="$clone_root/n$major-clone"
  echo "== Node $version ($nodedir)"
  rm -rf "$clone"
  git clone --quiet "$repo" "$clone" || { overall=1; continue; }
  echo "   clone $clone at $(git -C "$clone" rev-parse --short HEAD)"

  (
    cd "$clone" || exit 1
    export PATH="$nodedir/bin:$PATH"
    # node-gyp must use these headers, not ~/.npmrc's nodedir nor a download.
    export npm_config_nodedir="$nodedir"
    inner="$(node --version)"
    if [ "$inner" != "$version" ]; then
      echo "!! node on PATH is $inner, expected $version" >&2
      exit 1
    fi
    echo "   node $inner, npm $(npm --version)"
    rc=0
    run_step 'npm ci' "$logs/node$major-ci.log" npm ci --no-audit --no-fund || exit 1
    grep -i 'EBADENGINE\|engine' "$logs/node$major-ci.log" | sed 's/^/   /' | head -5
    run_step 'npm test' "$logs/node$major-test.log" npm test || rc=1
    # node --test's closing summary (# tests/pass/fail/...).
    grep -E '^(# |ℹ )(tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' \
      "$logs/node$major-test.log" | tail -8 | sed 's/^/     /'
    run_step 'demo' "$logs/node$major-demo.log" npm run demo || rc=1
    exit $rc
  )
  rc=$?
  summary+=("Node $version: $([ $rc -eq 0 ] && echo PASS || echo FAIL)")
  [ $rc -eq 0 ] || overall=1
  [ "${TASKPASS_NODEVER_KEEP:-}" = 1 ] || rm -rf "$clone"
done

echo "== summary (logs in $logs)"
printf '   %s\n' "${summary[@]}"
exit $overall
