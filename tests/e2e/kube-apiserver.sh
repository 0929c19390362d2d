#!/usr/bin/env bash
# End-to-end test: a real kube-apiserver (v1.20, built by
# scripts/build-kube-apiserver.sh) storing its data through cutover into a
# real etcd, all on 127.0.0.1.
#
# Usage:
#   tests/e2e/kube-apiserver.sh PATH_TO_CUTOVER_BINARY
#   CUTOVER_BIN=target/debug/cutover tests/e2e/kube-apiserver.sh
#   tests/e2e/kube-apiserver.sh --direct      # baseline: kube-apiserver -> etcd,
#                                             # no cutover (same as CUTOVER_BIN=none)
#
# Environment:
#   CUTOVER_BIN        cutover binary (when no argument is given); "none" = --direct
#   KUBE_APISERVER     use this kube-apiserver binary instead of building one
#   CUTOVER_CACHE      cache root handed to the build script
#   CUTOVER_E2E_KEEP=1 keep the temp dir (logs, certs, data) for debugging
#   CUTOVER_E2E_UNIX=1 cutover listens on a unix socket (cutover mode only):
#                      unix://$TMP/NAME, and kube-apiserver, started in $TMP, uses
#                      --etcd-servers=unix://NAME. kube-apiserver 1.20 cannot use
#                      unix:///abs/path: its startup check dials the URL's host part
#                      (empty there) and gives up with "error waiting for etcd
#                      connection". Its etcd client sends NAME as the HTTP/2
#                      :authority.
#   CUTOVER_E2E_UNIX_NAME  NAME above (default cutover.sock; no '/'). A name that is
#                      not a valid authority, e.g. etcd:0:0, exercises cutover's
#                      :authority rewriting (src/server/uds.rs).
#   ETCD               etcd binary (default: etcd from PATH: Debian etcd-server, or
#                      etcd 3.5 when `make e2e-3.5` puts it first)
#
# Needs: etcd (etcd-server), etcdctl (etcd-client), openssl, curl, jq. The last line of output is
# "N passed, M failed"; the exit status is non-zero if anything failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# log, pass, fail, check, fatal, cleanup, wait_for, free_port, start.
# shellcheck source=tests/e2e/lib.sh
source "$ROOT/tests/e2e/lib.sh"
PASSED=0
FAILED=0
PIDS=()        # every background process we start, killed on exit
TMP=""

usage() { # [exit status]
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-2}"
}

# ---------------------------------------------------------------- arguments

MODE=cutover
CUTOVER="${CUTOVER_BIN:-}"
while [[ $# -gt 0 ]]; do
	case $1 in
	--direct) MODE=direct ;;
	-h | --help) usage 0 ;;
	-*) log "unknown option: $1"; usage ;;
	*) CUTOVER=$1 ;;
	esac
	shift
done
[[ $CUTOVER == none ]] && MODE=direct
UNIX=${CUTOVER_E2E_UNIX:-0}
SOCK_NAME=${CUTOVER_E2E_UNIX_NAME:-cutover.sock}
if [[ $UNIX == 1 && $MODE == direct ]]; then
	log "CUTOVER_E2E_UNIX=1 needs cutover (etcd here listens on TCP only)"
	exit 2
fi
if [[ $UNIX == 1 && ($SOCK_NAME == */* || -z $SOCK_NAME) ]]; then
	log "CUTOVER_E2E_UNIX_NAME must be a file name without '/': $SOCK_NAME"
	exit 2
fi
if [[ $MODE == cutover ]]; then
	[[ -n $CUTOVER ]] || { log "no cutover binary given (argument or CUTOVER_BIN), or use --direct"; usage; }
	[[ -x $CUTOVER ]] || { log "cutover binary not executable: $CUTOVER"; exit 2; }
	CUTOVER=$(cd "$(dirname "$CUTOVER")" && pwd)/$(basename "$CUTOVER")
fi
ETCD="${ETCD:-etcd}"
for tool in "$ETCD" etcdctl openssl curl jq; do
	command -v "$tool" >/dev/null || { log "missing required tool: $tool"; exit 2; }
done

# ---------------------------------------------------------------- bookkeeping

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- binaries

if [[ -n ${KUBE_APISERVER:-} ]]; then
	APISERVER=$KUBE_APISERVER
else
	log "locating/building kube-apiserver via scripts/build-kube-apiserver.sh"
	APISERVER=$("$ROOT/scripts/build-kube-apiserver.sh" | tail -n 1)
fi
[[ -x $APISERVER ]] || { log "kube-apiserver not executable: $APISERVER"; exit 2; }
KUBECTL=$(dirname "$APISERVER")/kubectl
[[ -x $KUBECTL ]] || KUBECTL=""
log "kube-apiserver: $APISERVER ($("$APISERVER" --version))"
log "etcd: $("$ETCD" --version | head -n 1) ($(command -v "$ETCD")), $(etcdctl version | head -n 1)"
log "mode: $MODE${CUTOVER:+ ($CUTOVER)}$([[ $UNIX == 1 ]] && echo ", over a unix socket")"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cutover-e2e-kube.XXXXXX")

# ---------------------------------------------------------------- PKI

# Throwaway CA + serving cert for 127.0.0.1 (so curl verifies TLS properly),
# a service-account key pair, and a static bearer token in system:masters.
pki() {
	cd "$TMP"
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=cutover-e2e-ca" \
		-keyout ca.key -out ca.crt
	openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
		-keyout serving.key -out serving.csr
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >serving.ext
	openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
		-days 1 -extfile serving.ext -out serving.crt
	openssl genrsa -out sa.key 2048
	openssl rsa -in sa.key -pubout -out sa.pub
}
pki >"$TMP/openssl.log" 2>&1 || fatal "generate certificates and keys with openssl"
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,e2e-admin,e2e-admin,system:masters" >"$TMP/tokens.csv"

# ---------------------------------------------------------------- etcd

free_port ETCD_PORT
free_port ETCD_PEER_PORT
start etcd "$ETCD" --name e2e --data-dir "$TMP/etcd-data" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster-state new
ETCD_PID=$LAST_PID
etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
wait_for "etcd /health" 30 "$ETCD_PID" etcd_healthy || fatal "etcd became healthy on 127.0.0.1:$ETCD_PORT"
pass "etcd healthy on 127.0.0.1:$ETCD_PORT"

# ---------------------------------------------------------------- cutover

if [[ $MODE == cutover ]]; then
	# A second datastore, "dedicated": the live migration below moves the tenant there.
	free_port ETCD2_PORT
	free_port ETCD2_PEER_PORT
	start etcd-dedicated "$ETCD" --name e2e2 --data-dir "$TMP/etcd2-data" \
		--listen-client-urls "http://127.0.0.1:$ETCD2_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD2_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD2_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD2_PEER_PORT" \
		--initial-cluster "e2e2=http://127.0.0.1:$ETCD2_PEER_PORT" \
		--initial-cluster-state new
	ETCD2_PID=$LAST_PID
	etcd2_healthy() { curl -fsS "http://127.0.0.1:$ETCD2_PORT/health" | grep -q '"health":"true"'; }
	wait_for "etcd dedicated /health" 30 "$ETCD2_PID" etcd2_healthy || fatal "second etcd became healthy"
	free_port CUTOVER_PORT
	free_port CUTOVER_ADMIN_PORT
	if [[ $UNIX == 1 ]]; then
		CUTOVER_LISTEN=unix://$TMP/$SOCK_NAME
	else
		CUTOVER_LISTEN=127.0.0.1:$CUTOVER_PORT
	fi
	openssl rand -hex 16 >"$TMP/admin-token"
	cat >"$TMP/cutover.yaml" <<EOF
listen: $CUTOVER_LISTEN
admin: {listen: 127.0.0.1:$CUTOVER_ADMIN_PORT, tokenFile: $TMP/admin-token}
dataStore: default
dataStores:
  default:
    endpoints: ["127.0.0.1:$ETCD_PORT"]
  dedicated:
    endpoints: ["127.0.0.1:$ETCD2_PORT"]
EOF
	start cutover env RUST_BACKTRACE=1 NO_COLOR=1 "$CUTOVER" serve --config "$TMP/cutover.yaml"
	CUTOVER_PID=$LAST_PID
	cutover_ready() { curl -fsS -o /dev/null "http://127.0.0.1:$CUTOVER_ADMIN_PORT/readyz"; }
	wait_for "cutover admin /readyz" 30 "$CUTOVER_PID" cutover_ready ||
		fatal "cutover admin /readyz returned 200 on 127.0.0.1:$CUTOVER_ADMIN_PORT"
	pass "cutover ready (GET /readyz on admin 127.0.0.1:$CUTOVER_ADMIN_PORT -> 200)"
	if [[ $UNIX == 1 ]]; then
		STORAGE_URL=unix://$SOCK_NAME # relative to kube-apiserver's directory, $TMP
	else
		STORAGE_URL=http://127.0.0.1:$CUTOVER_PORT
	fi
else
	STORAGE_URL=http://127.0.0.1:$ETCD_PORT
fi
log "kube-apiserver storage: $STORAGE_URL"

# ---------------------------------------------------------------- kube-apiserver

free_port API_PORT
cd "$TMP" # where a relative unix socket name is looked up
# Minimal standalone flags: serve TLS on loopback only, no insecure port,
# static token auth + RBAC (the token's group system:masters may do anything;
# RBAC also makes the apiserver bootstrap its policy objects through storage),
# no endpoint reconciler (it would try to publish 127.0.0.1, which Endpoints
# validation rejects).
start kube-apiserver "$APISERVER" \
	--etcd-servers="$STORAGE_URL" \
	--bind-address=127.0.0.1 \
	--advertise-address=127.0.0.1 \
	--secure-port="$API_PORT" \
	--insecure-port=0 \
	--cert-dir="$TMP/apiserver-certs" \
	--tls-cert-file="$TMP/serving.crt" \
	--tls-private-key-file="$TMP/serving.key" \
	--token-auth-file="$TMP/tokens.csv" \
	--authorization-mode=RBAC \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$TMP/sa.pub" \
	--service-account-signing-key-file="$TMP/sa.key" \
	--service-cluster-ip-range=10.96.0.0/24 \
	--endpoint-reconciler-type=none \
	--profiling=false \
	--v=1
API_PID=$LAST_PID
API="https://127.0.0.1:$API_PORT"

# req METHOD PATH [JSON-BODY]: sets STATUS (HTTP code) and BODY.
req() {
	local method=$1 path=$2 data=${3:-}
	local args=(-sS --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN"
		-H "Accept: application/json" -o "$TMP/resp" -w '%{http_code}' -X "$method")
	if [[ -n $data ]]; then
		args+=(-H "Content-Type: application/json" --data-binary "$data")
	fi
	rm -f "$TMP/resp" # never report a previous request's body
	STATUS=$(curl "${args[@]}" "$API$path") || STATUS=000
	BODY=$(cat "$TMP/resp" 2>/dev/null || true)
}
# expect DESCRIPTION CODE: assert on the last req.
expect() {
	local desc=$1 code=$2
	if [[ $STATUS == "$code" ]]; then
		pass "$desc -> HTTP $STATUS"
	else
		fail "$desc -> expected HTTP $code, got $STATUS: $(head -c 600 <<<"$BODY")"
	fi
}

api_ready() { req GET /readyz && [[ $STATUS == 200 && $BODY == ok ]]; }
wait_for "kube-apiserver /readyz" 180 "$API_PID" api_ready || {
	req GET '/readyz?verbose'
	log "last /readyz?verbose: HTTP $STATUS"
	printf '%s\n' "$BODY" >&2
	fatal "kube-apiserver /readyz returned ok on $API"
}
pass "kube-apiserver ready (GET /readyz -> 200 ok)"

# ---------------------------------------------------------------- REST checks

NS="cutover-e2e-$RANDOM"
CM="/api/v1/namespaces/$NS/configmaps"
cm_json() { # name key value [resourceVersion]
	jq -cn --arg ns "$NS" --arg n "$1" --arg k "$2" --arg v "$3" --arg rv "${4:-}" \
		'{apiVersion:"v1",kind:"ConfigMap",metadata:({name:$n,namespace:$ns,labels:{suite:"cutover-e2e"}}
		 + (if $rv == "" then {} else {resourceVersion:$rv} end)),data:{($k):$v}}'
}

req POST /api/v1/namespaces "$(jq -cn --arg n "$NS" '{apiVersion:"v1",kind:"Namespace",metadata:{name:$n}}')"
expect "create namespace $NS" 201

for name in cm-a cm-b cm-c; do
	req POST "$CM" "$(cm_json "$name" greeting "hello from $name")"
	expect "create configmap $NS/$name" 201
done

req POST "$CM" "$(cm_json cm-a greeting duplicate)"
expect "create configmap $NS/cm-a again is rejected as AlreadyExists" 409
check "duplicate create reports reason AlreadyExists" \
	test "$(jq -r .reason <<<"$BODY" 2>/dev/null)" = AlreadyExists

req GET "$CM"
expect "list configmaps in $NS" 200
names=$(jq -r '[.items[].metadata.name] | sort | join(",")' <<<"$BODY" 2>/dev/null || true)
check "list returns exactly cm-a,cm-b,cm-c (got: ${names:-none})" test "$names" = cm-a,cm-b,cm-c
LIST_RV=$(jq -r '.metadata.resourceVersion // empty' <<<"$BODY" 2>/dev/null || true)
check "list carries a resourceVersion (${LIST_RV:-none})" test -n "$LIST_RV"

# Paginated list (limit/continue): served from storage as ranged reads.
req GET "$CM?limit=2"
expect "list configmaps with limit=2" 200
page1=$(jq -r '[.items[].metadata.name] | join(",")' <<<"$BODY" 2>/dev/null || true)
cont=$(jq -r '.metadata.continue // empty' <<<"$BODY" 2>/dev/null || true)
check "first page has 2 items (${page1:-none}) and a continue token" \
	test "$page1" = cm-a,cm-b -a -n "$cont"
req GET "$CM?limit=2&continue=$(jq -rn --arg c "$cont" '$c|@uri')"
expect "list configmaps, second page" 200
page2=$(jq -r '[.items[].metadata.name] | join(",")' <<<"$BODY" 2>/dev/null || true)
cont2=$(jq -r '.metadata.continue // empty' <<<"$BODY" 2>/dev/null || true)
check "second page is cm-c (${page2:-none}) with no further continue token" \
	test "$page2" = cm-c -a -z "$cont2"

req GET "$CM?labelSelector=suite%3Dcutover-e2e"
expect "list configmaps by label selector" 200
check "label selector matches 3 configmaps" test "$(jq '.items | length' <<<"$BODY" 2>/dev/null)" = 3

# Watch from the list's resourceVersion: every change after the list must be
# delivered, regardless of when the connection is established.
curl -sS -N --max-time 120 --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN" \
	"$API$CM?watch=1&resourceVersion=$LIST_RV&timeoutSeconds=110" >"$TMP/watch.out" 2>"$TMP/watch.log" &
PIDS+=("$!")
WATCH_PID=$!

req GET "$CM/cm-a"
expect "get configmap cm-a" 200
OLD_RV=$(jq -r .metadata.resourceVersion <<<"$BODY" 2>/dev/null || true)

req PUT "$CM/cm-a" "$(cm_json cm-a greeting updated "$OLD_RV")"
expect "update configmap cm-a at resourceVersion $OLD_RV" 200
NEW_RV=$(jq -r .metadata.resourceVersion <<<"$BODY" 2>/dev/null || true)
check "update returns the new data and a new resourceVersion ($OLD_RV -> ${NEW_RV:-none})" \
	test "$(jq -r .data.greeting <<<"$BODY" 2>/dev/null)" = updated -a -n "$NEW_RV" -a "$NEW_RV" != "$OLD_RV"

req GET "$CM/cm-a"
expect "get configmap cm-a after update" 200
check "get sees the update (greeting=updated, resourceVersion $NEW_RV)" \
	test "$(jq -r '.data.greeting + " " + .metadata.resourceVersion' <<<"$BODY" 2>/dev/null)" = "updated $NEW_RV"

req PUT "$CM/cm-a" "$(cm_json cm-a greeting stale "$OLD_RV")"
expect "update configmap cm-a with stale resourceVersion $OLD_RV is rejected" 409
check "stale update reports reason Conflict" test "$(jq -r .reason <<<"$BODY" 2>/dev/null)" = Conflict

req DELETE "$CM/cm-b"
expect "delete configmap cm-b" 200

req GET "$CM/cm-b"
expect "get deleted configmap cm-b" 404

# Wait (bounded) until the watch has delivered both events.
watch_has() { # type name; slurp so an empty stream is a plain "false"
	jq -s -e --arg t "$1" --arg n "$2" 'any(.[]; .type == $t and .object.metadata.name == $n)' \
		"$TMP/watch.out" >/dev/null 2>&1
}
watch_done() { watch_has MODIFIED cm-a && watch_has DELETED cm-b; }
wait_for "watch events MODIFIED cm-a and DELETED cm-b" 30 "$WATCH_PID" watch_done || true
check "watch delivered MODIFIED cm-a" watch_has MODIFIED cm-a
check "watch MODIFIED cm-a carries greeting=updated at resourceVersion $NEW_RV" \
	test "$(jq -r 'select(.type == "MODIFIED" and .object.metadata.name == "cm-a")
		| .object.data.greeting + " " + .object.metadata.resourceVersion' "$TMP/watch.out" 2>/dev/null)" = "updated $NEW_RV"
check "watch delivered DELETED cm-b" watch_has DELETED cm-b
events=$(jq -r '.type + " " + .object.metadata.name' "$TMP/watch.out" 2>/dev/null | paste -sd, - || true)
check "watch saw exactly [MODIFIED cm-a, DELETED cm-b] in order (got: ${events:-nothing})" \
	test "$events" = "MODIFIED cm-a,DELETED cm-b"
if [[ $events != "MODIFIED cm-a,DELETED cm-b" ]]; then
	log "watch output:"
	head -c 4000 "$TMP/watch.out" >&2 || true
	cat "$TMP/watch.log" >&2 || true
fi

req GET "$CM"
names=$(jq -r '[.items[].metadata.name] | sort | join(",")' <<<"$BODY" 2>/dev/null || true)
check "final list is cm-a,cm-c (got: ${names:-none})" test "$names" = cm-a,cm-c

if [[ -n $KUBECTL ]]; then
	kc_names=$("$KUBECTL" --server="$API" --certificate-authority="$TMP/ca.crt" --token="$TOKEN" \
		get configmaps -n "$NS" -o name 2>"$TMP/kubectl.log" | sort | paste -sd, - || true)
	check "kubectl get configmaps -n $NS lists cm-a,cm-c (got: ${kc_names:-none})" \
		test "$kc_names" = configmap/cm-a,configmap/cm-c
fi

if [[ $UNIX == 1 ]]; then
	# kube-apiserver polls each endpoint's Maintenance.Status for this metric on a
	# connection of its own whose :authority is "unix://NAME"; -1 means the call failed.
	req GET /metrics
	db_size=$(grep -E '^etcd_db_total_size_in_bytes\{' <<<"$BODY" | head -n 1 || true)
	check "kube-apiserver read the datastore's size over the socket (${db_size:-no etcd_db_total_size_in_bytes})" \
		awk '{ exit !($NF > 0) }' <<<"${db_size:-x -1}"
fi

# ---------------------------------------------------------------- live migration

if [[ $MODE == cutover ]]; then
	# Objects and a watch from before the migration, a create load during it, and
	# after it: the same resourceVersions, the watch still streaming (no 410, no
	# relist), an update carrying a pre-migration resourceVersion accepted, and the
	# same kube-apiserver process throughout.
	req GET "$CM/cm-c"
	CMC_BEFORE=$(jq -c '{rv: .metadata.resourceVersion, data}' <<<"$BODY" 2>/dev/null || true)
	req GET "$CM/cm-a"
	CMA_BEFORE=$(jq -c '{rv: .metadata.resourceVersion, data}' <<<"$BODY" 2>/dev/null || true)
	CMC_RV=$(jq -r .rv <<<"$CMC_BEFORE" 2>/dev/null || true)
	req GET "$CM"
	MIG_RV=$(jq -r '.metadata.resourceVersion // empty' <<<"$BODY" 2>/dev/null || true)
	curl -sS -N --max-time 170 --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN" \
		"$API$CM?watch=1&resourceVersion=$MIG_RV&timeoutSeconds=160" >"$TMP/mwatch.out" 2>"$TMP/mwatch.log" &
	PIDS+=("$!")
	MWATCH_PID=$!

	# The load: configmaps created one after another until told to stop.
	(
		i=0
		while [[ ! -e $TMP/stop-load ]]; do
			i=$((i + 1))
			code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN" \
				-H "Content-Type: application/json" -X POST --data-binary "$(cm_json "load-$i" n "$i")" "$API$CM" || echo 000)
			echo "load-$i $code" >>"$TMP/load.out"
		done
	) &
	LOAD_PID=$!
	PIDS+=("$LOAD_PID")
	load_count() { [[ -f $TMP/load.out ]] && wc -l <"$TMP/load.out" || echo 0; }
	load_ahead() { (($(load_count) >= $1)); }
	wait_for "the create load to start" 30 "$LOAD_PID" load_ahead 10 || true

	ADMIN="http://127.0.0.1:$CUTOVER_ADMIN_PORT"
	mig=$(curl -sS -X POST -H "Authorization: Bearer $(cat "$TMP/admin-token")" -H "Content-Type: application/json" \
		--data '{"to":"dedicated"}' -w ' %{http_code}' "$ADMIN/v1/migrations" || true)
	check "POST /v1/migrations {to: dedicated} is accepted (${mig##* })" test "${mig##* }" = 202
	migration_ended() {
		curl -fsS "$ADMIN/v1/status" | jq -e '.migration.outcome != "Running" and .phase == "Ready"' >/dev/null
	}
	wait_for "the migration to end" 120 "$CUTOVER_PID" migration_ended || true
	STATUS_JSON=$(curl -fsS "$ADMIN/v1/status" || true)
	check "the migration succeeded ($(jq -c '.migration | {outcome, phase, fenceMs, keysCopied, error}' <<<"$STATUS_JSON" 2>/dev/null))" \
		test "$(jq -r .migration.outcome <<<"$STATUS_JSON" 2>/dev/null)" = Succeeded
	check "cutover now serves from dedicated" test "$(jq -r .dataStore <<<"$STATUS_JSON" 2>/dev/null)" = dedicated
	after_commit=$(load_count)
	wait_for "the create load to go on after the commit" 30 "$LOAD_PID" load_ahead $((after_commit + 10)) || true
	touch "$TMP/stop-load"
	wait "$LOAD_PID" 2>/dev/null || true
	LOAD_TOTAL=$(load_count)
	LOAD_BAD=$(awk '$2 != 201' "$TMP/load.out" | head -n 5 | paste -sd' ' - || true)
	check "every create during the migration succeeded ($LOAD_TOTAL creates; failures: ${LOAD_BAD:-none})" test -z "$LOAD_BAD"

	req GET "$CM/cm-c"
	check "cm-c has the same resourceVersion and data after the migration ($CMC_BEFORE)" \
		test "$(jq -c '{rv: .metadata.resourceVersion, data}' <<<"$BODY" 2>/dev/null)" = "$CMC_BEFORE"
	req GET "$CM/cm-a"
	check "cm-a has the same resourceVersion and data after the migration ($CMA_BEFORE)" \
		test "$(jq -c '{rv: .metadata.resourceVersion, data}' <<<"$BODY" 2>/dev/null)" = "$CMA_BEFORE"
	req PUT "$CM/cm-c" "$(cm_json cm-c greeting "moved" "$CMC_RV")"
	expect "update cm-c with its pre-migration resourceVersion $CMC_RV" 200
	POST_RV=$(jq -r .metadata.resourceVersion <<<"$BODY" 2>/dev/null || true)
	check "the new resourceVersion ($POST_RV) is above every earlier one ($MIG_RV)" \
		test "${POST_RV:-0}" -gt "${MIG_RV:-0}"
	req GET "$CM?limit=500"
	expect "list after the migration" 200
	listed=$(jq '[.items[].metadata.name | select(startswith("load-"))] | length' <<<"$BODY" 2>/dev/null || echo 0)
	check "every configmap of the load is listed ($listed of $LOAD_TOTAL)" test "$listed" = "$LOAD_TOTAL"

	mwatch_has_cmc() {
		jq -s -e 'any(.[]; .type == "MODIFIED" and .object.metadata.name == "cm-c" and .object.data.greeting == "moved")' \
			"$TMP/mwatch.out" >/dev/null 2>&1
	}
	wait_for "the pre-migration watch to deliver the post-migration update" 30 "$MWATCH_PID" mwatch_has_cmc || true
	check "the watch opened before the migration delivered the update made after it" mwatch_has_cmc
	check "that watch is still the same open connection (no relist)" kill -0 "$MWATCH_PID"
	check "that watch carried no ERROR event (no 410 Gone)" \
		test "$(jq -s '[.[] | select(.type == "ERROR")] | length' "$TMP/mwatch.out" 2>/dev/null)" = 0
	added=$(jq -s '[.[] | select(.type == "ADDED" and (.object.metadata.name | startswith("load-")))] | length' "$TMP/mwatch.out" 2>/dev/null || echo 0)
	added_unique=$(jq -s '[.[] | select(.type == "ADDED" and (.object.metadata.name | startswith("load-"))) | .object.metadata.name] | unique | length' "$TMP/mwatch.out" 2>/dev/null || echo 0)
	check "the watch saw each create of the load exactly once ($added events, $added_unique names, $LOAD_TOTAL creates)" \
		test "$added" = "$LOAD_TOTAL" -a "$added_unique" = "$LOAD_TOTAL"
	rvs_sorted=$(jq -s '[.[] | .object.metadata.resourceVersion | tonumber] as $r | $r == ($r | sort)' "$TMP/mwatch.out" 2>/dev/null || echo false)
	check "the watch's resourceVersions only grow" test "$rvs_sorted" = true
	on_dedicated=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD2_PORT" get --prefix "/registry/configmaps/$NS/" --keys-only 2>/dev/null | grep -c "^/registry/configmaps/$NS/" || true)
	check "the dedicated datastore holds the namespace's configmaps ($on_dedicated keys)" test "$on_dedicated" -ge "$((LOAD_TOTAL + 2))"
	check "kube-apiserver was never restarted (pid $API_PID alive)" kill -0 "$API_PID"
fi

req GET /readyz
check "kube-apiserver /readyz still ok at the end (HTTP $STATUS: $BODY)" test "$STATUS" = 200 -a "$BODY" = ok
if [[ $MODE == cutover ]]; then
	check "cutover admin /readyz still 200 at the end" cutover_ready
fi
check "kube-apiserver log has no 'Observed a panic'" not_in_log "Observed a panic" kube-apiserver.log
if [[ $MODE == cutover ]]; then
	check "cutover log has no panic" not_in_log "panicked" cutover.log
fi
check "all processes still running" kill -0 "$ETCD_PID" "$API_PID" ${CUTOVER_PID:+"$CUTOVER_PID"} ${ETCD2_PID:+"$ETCD2_PID"}

[[ $FAILED -eq 0 ]] || dump_logs
