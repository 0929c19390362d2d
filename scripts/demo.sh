#!/usr/bin/env bash
# The cutover demo: a local etcd, cutover in front of it, a write load and a watcher
# through cutover, and what cutover saw (its status and metrics). Everything runs on
# 127.0.0.1 in a temp dir and is stopped on exit.
set -euo pipefail

bin=${1:-${CUTOVER_BIN:-target/release/cutover}}
keys=${DEMO_KEYS:-200}
[ -x "$bin" ] || { echo "usage: $0 PATH_TO_CUTOVER (not executable: $bin)" >&2; exit 2; }
bin=$(realpath "$bin")

work=$(mktemp -d -t cutover-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A port nothing listens on: connecting to it must fail.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

# Polls a command until it succeeds, up to a deadline in seconds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.1
  done
}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

export ETCDCTL_API=3
proxy_port=$(free_port); admin_port=$(free_port)

# Two etcd datastores: "default", where the tenant lives, and "dedicated", where it moves.
start_etcd() {
  local name=$1 port=$2 peer
  peer=$(free_port)
  etcd --name "$name" --data-dir "$work/$name" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$name=http://127.0.0.1:$peer" --log-level warn --logger zap >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_for "etcd $name" 30 etcdctl --endpoints "127.0.0.1:$port" endpoint health
}
a_port=$(free_port); b_port=$(free_port)
say "starting two etcd $(etcd --version | head -1 | awk '{print $3}') datastores: default on 127.0.0.1:$a_port, dedicated on 127.0.0.1:$b_port"
start_etcd default "$a_port"
start_etcd dedicated "$b_port"

head -c 24 /dev/urandom | base64 >"$work/admin-token"
cat >"$work/cutover.yaml" <<YAML
listen: 127.0.0.1:$proxy_port
admin:
  listen: 127.0.0.1:$admin_port
  tokenFile: $work/admin-token
prefix: /registry/
dataStore: default
dataStores:
  default:
    endpoints: ["127.0.0.1:$a_port"]
  dedicated:
    endpoints: ["127.0.0.1:$b_port"]
migration:
  stepDelay: ${DEMO_STEP_DELAY:-1s}   # a pause per phase, so each one shows
YAML
say "starting cutover on 127.0.0.1:$proxy_port (admin API on 127.0.0.1:$admin_port)"
cat "$work/cutover.yaml"
"$bin" serve --config "$work/cutover.yaml" >"$work/cutover.log" 2>&1 &
pids+=($!)
wait_for "cutover /readyz" 30 curl -sf "http://127.0.0.1:$admin_port/readyz"
proxy="127.0.0.1:$proxy_port"

say "the tenant's data: $keys keys written through cutover"
# etcdctl has no batch put; a Txn carries up to 128 puts at once.
for start in $(seq 1 100 "$keys"); do
  end=$((start + 99)); [ "$end" -gt "$keys" ] && end=$keys
  { printf '\n'; for i in $(seq "$start" "$end"); do printf 'put /registry/configmaps/demo/cm-%s value-%s\n' "$i" "$i"; done; printf '\n\n'; } |
    etcdctl --endpoints "$proxy" txn >/dev/null
done
etcdctl --endpoints "$proxy" get /registry/configmaps/demo/cm-1 -w json | jq -c '.kvs[0] | {key: (.key | @base64d), create_revision, mod_revision, version}' >"$work/cm-1.before"
echo "before: $(cat "$work/cm-1.before")"

say "a watcher on /registry/ through cutover, and a write load (kube-style txns, one writer)"
etcdctl --endpoints "$proxy" watch --prefix /registry/ >"$work/watch.out" 2>&1 &
pids+=($!)
wait_for "the watch to open" 20 bash -c "curl -s http://127.0.0.1:$admin_port/metrics | grep -q '^cutover_open_watches 1'"
: >"$work/acked"
(
  n=0
  while [ ! -e "$work/stop" ]; do
    n=$((n + 1))
    k="/registry/pods/demo/pod-$((n % 20))"
    if etcdctl --endpoints "$proxy" put "$k" "write-$n" >/dev/null 2>>"$work/load.err"; then
      echo "$k write-$n" >>"$work/acked"
    else
      echo "write $n failed" >>"$work/load.err"
    fi
  done
) &
load=$!
pids+=($load)
wait_for "the load to start" 20 bash -c "[ \$(wc -l <'$work/acked') -ge 20 ]"

say "cutover migrate --to dedicated --wait   (status lines as the migration goes)"
"$bin" migrate --config "$work/cutover.yaml" --to dedicated --wait

at_commit=$(wc -l <"$work/acked")
wait_for "more writes after the cutover" 20 bash -c "[ \$(wc -l <'$work/acked') -ge $((at_commit + 20)) ]"
touch "$work/stop"; wait "$load" 2>/dev/null || true

say "checking nothing was lost"
acked=$(wc -l <"$work/acked")
errors=$(grep -c . "$work/load.err" 2>/dev/null || true)
# The last acknowledged value of every key, read through cutover and in "dedicated" directly.
lost=0
declare -A last
while read -r k v; do last[$k]=$v; done <"$work/acked"
for k in "${!last[@]}"; do
  got=$(etcdctl --endpoints "$proxy" get "$k" --print-value-only)
  direct=$(etcdctl --endpoints "127.0.0.1:$b_port" get "$k" --print-value-only)
  if [ "$got" != "${last[$k]}" ] || [ "$direct" != "${last[$k]}" ]; then
    echo "LOST: $k: acknowledged ${last[$k]}, through cutover '$got', in dedicated '$direct'"; lost=$((lost + 1))
  fi
done
wait_for "the watcher to see every write" 20 bash -c "[ \$(grep -c '^PUT' '$work/watch.out') -ge $acked ]"
events=$(grep -c '^PUT' "$work/watch.out")
etcdctl --endpoints "$proxy" get /registry/configmaps/demo/cm-1 -w json | jq -c '.kvs[0] | {key: (.key | @base64d), create_revision, mod_revision, version}' >"$work/cm-1.after"
echo "acknowledged writes: $acked, client errors: $errors, watch events: $events, keys lost: $lost"
echo "before: $(cat "$work/cm-1.before")"
echo "after:  $(cat "$work/cm-1.after")"
fence=$(curl -s "http://127.0.0.1:$admin_port/v1/status" | jq -r '.migration.fenceMs')
echo "writes were fenced for ${fence} ms"
[ "$lost" -eq 0 ] && [ "$errors" -eq 0 ] && [ "$events" -eq "$acked" ] && cmp -s "$work/cm-1.before" "$work/cm-1.after" ||
  { echo "MISMATCH" >&2; exit 1; }

say "cutover status"
"$bin" status --config "$work/cutover.yaml"

say "cutover metrics (GET /metrics, migration excerpt)"
curl -s "http://127.0.0.1:$admin_port/metrics" |
  grep -E '^cutover_(migration|migrations|fenced_writes|open_watches)' | grep -v '_bucket' | sort

say "demo done: the tenant moved live; every acknowledged write is in the new datastore, the watcher saw each one once, and resourceVersions did not change"
