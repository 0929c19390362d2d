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

etcd_port=$(free_port); peer_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
export ETCDCTL_API=3

say "starting etcd $(etcd --version | head -1 | awk '{print $3}') on 127.0.0.1:$etcd_port"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "demo=http://127.0.0.1:$peer_port" --log-level warn --logger zap >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_for "etcd" 30 etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health

cat >"$work/cutover.yaml" <<YAML
listen: 127.0.0.1:$proxy_port
admin:
  listen: 127.0.0.1:$admin_port
dataStore: default
dataStores:
  default:
    endpoints: ["127.0.0.1:$etcd_port"]
YAML
say "starting cutover on 127.0.0.1:$proxy_port (admin API on 127.0.0.1:$admin_port)"
cat "$work/cutover.yaml"
"$bin" serve --config "$work/cutover.yaml" >"$work/cutover.log" 2>&1 &
pids+=($!)
wait_for "cutover /readyz" 30 curl -sf "http://127.0.0.1:$admin_port/readyz"

proxy="127.0.0.1:$proxy_port"
say "a watcher on demo/ through cutover"
etcdctl --endpoints "$proxy" watch --prefix demo/ >"$work/watch.out" 2>&1 &
watcher=$!
pids+=($watcher)
# The watch is open once cutover counts it.
wait_for "the watch to open" 20 bash -c "curl -s http://127.0.0.1:$admin_port/metrics | grep -q '^cutover_open_watches 1'"

say "writing $keys keys through cutover (put, and a kube-style txn on every 10th)"
for i in $(seq 1 "$keys"); do
  etcdctl --endpoints "$proxy" put "demo/key-$i" "value-$i" >/dev/null
  if [ $((i % 10)) -eq 0 ]; then
    rev=$(etcdctl --endpoints "$proxy" get "demo/key-$i" -w json | sed -E 's/.*"mod_revision":([0-9]+).*/\1/')
    printf 'mod("demo/key-%s") = "%s"\n\nput demo/key-%s updated-%s\n\nget demo/key-%s\n\n' "$i" "$rev" "$i" "$i" "$i" |
      etcdctl --endpoints "$proxy" txn >/dev/null
  fi
  if [ $((i % 50)) -eq 0 ]; then
    printf '  %4d keys written; cutover has served %s requests\n' "$i" \
      "$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^cutover_grpc_requests_total/ {s+=$NF} END {print s}')"
  fi
done

expected_events=$((keys + keys / 10))
wait_for "the watcher to see $expected_events events" 30 bash -c "[ \$(grep -c '^PUT' '$work/watch.out') -ge $expected_events ]"

say "checking nothing was lost"
through=$(etcdctl --endpoints "$proxy" get --prefix demo/ --keys-only | grep -c '^demo/')
direct=$(etcdctl --endpoints "127.0.0.1:$etcd_port" get --prefix demo/ --keys-only | grep -c '^demo/')
events=$(grep -c '^PUT' "$work/watch.out")
echo "keys through cutover: $through, in etcd directly: $direct, watch events: $events (expected $keys keys, $expected_events events)"
[ "$through" -eq "$keys" ] && [ "$direct" -eq "$keys" ] && [ "$events" -eq "$expected_events" ] || { echo "MISMATCH" >&2; exit 1; }

say "cutover status (GET /v1/status)"
curl -s "http://127.0.0.1:$admin_port/v1/status"; echo

say "cutover metrics (GET /metrics, excerpt)"
curl -s "http://127.0.0.1:$admin_port/metrics" |
  grep -E '^cutover_(grpc_requests_total|open_watches|open_streams|upstream_endpoint_up)' | sort

say "demo done: every write acknowledged through cutover is in etcd, and the watcher saw each one"
