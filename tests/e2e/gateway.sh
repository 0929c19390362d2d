#!/usr/bin/env bash
# End-to-end test of gateway mode: two real kube-apiservers (v1.20, built by
# scripts/build-kube-apiserver.sh), started as Kamaji starts them, store two tenants'
# data through a gateway of two cutover replicas into a pool of two etcd clusters; one
# tenant then moves to the other cluster under a create load while the other keeps
# working. All on 127.0.0.1.
#
# Usage:
#   tests/e2e/gateway.sh PATH_TO_CUTOVER_BINARY
#
# Environment:
#   KUBE_APISERVER     use this kube-apiserver binary instead of building one
#   CUTOVER_E2E_KEEP=1 keep the temp dir (logs, certs, data) for debugging
#   ETCD               etcd binary (default: etcd from PATH)
#
# Needs: etcd, etcdctl, openssl, curl, jq. The last line of output is
# "N passed, M failed"; the exit status is non-zero if anything failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$ROOT/tests/e2e/lib.sh"
PASSED=0
FAILED=0
PIDS=()
TMP=""

CUTOVER=${1:-}
[[ -n $CUTOVER && -x $CUTOVER ]] || { log "usage: $0 PATH_TO_CUTOVER_BINARY"; exit 2; }
CUTOVER=$(cd "$(dirname "$CUTOVER")" && pwd)/$(basename "$CUTOVER")
ETCD="${ETCD:-etcd}"
for tool in "$ETCD" etcdctl openssl curl jq; do
	command -v "$tool" >/dev/null || { log "missing required tool: $tool"; exit 2; }
done

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n ${KUBE_APISERVER:-} ]]; then
	APISERVER=$KUBE_APISERVER
else
	APISERVER=$("$ROOT/scripts/build-kube-apiserver.sh" | tail -n 1)
fi
[[ -x $APISERVER ]] || { log "kube-apiserver not executable: $APISERVER"; exit 2; }
log "kube-apiserver: $("$APISERVER" --version); etcd: $("$ETCD" --version | head -n 1)"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cutover-e2e-gateway.XXXXXX")

# ---------------------------------------------------------------- PKI

# One CA: the DataStore's (it signs the gateway's serving certificate and every etcd
# client certificate: root for Kamaji's controller, u-a and u-b for the tenants) and the
# kube-apiservers' serving certificate.
pki() {
	cd "$TMP"
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=cutover-e2e-ca" -keyout ca.key -out ca.crt
	cert() { # name CN ext
		openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
		printf '%s\n' "$3" >"$1.ext"
		openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile "$1.ext" -out "$1.crt"
	}
	cert serving kube-apiserver $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'
	cert gateway cutover-gateway $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'
	for cn in root u-a u-b; do
		cert "$cn" "$cn" 'extendedKeyUsage=clientAuth'
	done
	openssl genrsa -out sa.key 2048
	openssl rsa -in sa.key -pubout -out sa.pub
}
pki >"$TMP/openssl.log" 2>&1 || fatal "generate certificates and keys with openssl"
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,e2e-admin,e2e-admin,system:masters" >"$TMP/tokens.csv"
openssl rand -hex 16 >"$TMP/admin-token"

# ---------------------------------------------------------------- the pool

start_etcd() { # name; sets ${NAME}_PORT
	local name=$1 port peer
	free_port port
	free_port peer
	start "etcd-$name" "$ETCD" --name "$name" --data-dir "$TMP/etcd-$name" \
		--listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
		--listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "$name=http://127.0.0.1:$peer" --initial-cluster-state new
	printf -v "${name^^}_PORT" %s "$port"
	etcd_up() { curl -fsS "http://127.0.0.1:$1/health" | grep -q '"health":"true"'; }
	wait_for "etcd $name /health" 30 "$LAST_PID" etcd_up "$port" || fatal "etcd $name became healthy"
}
start_etcd east
start_etcd west
pass "two etcd clusters, east (127.0.0.1:$EAST_PORT) and west (127.0.0.1:$WEST_PORT)"

# ---------------------------------------------------------------- the gateway

GW_PORTS=()
GW_ADMIN=()
for i in 1 2; do
	free_port port
	free_port admin
	cat >"$TMP/gateway-$i.yaml" <<EOF
mode: gateway
listen: 127.0.0.1:$port
admin: {listen: 127.0.0.1:$admin, tokenFile: $TMP/admin-token}
tls: {certFile: $TMP/gateway.crt, keyFile: $TMP/gateway.key, clientCAFile: $TMP/ca.crt}
dataStore: east
dataStores:
  east: {endpoints: ["127.0.0.1:$EAST_PORT"]}
  west: {endpoints: ["127.0.0.1:$WEST_PORT"]}
EOF
	start "gateway-$i" env RUST_BACKTRACE=1 NO_COLOR=1 "$CUTOVER" serve --config "$TMP/gateway-$i.yaml"
	GW_PORTS+=("$port")
	GW_ADMIN+=("http://127.0.0.1:$admin")
	gw_ready() { curl -fsS -o /dev/null "$1/readyz"; }
	wait_for "gateway $i /readyz" 30 "$LAST_PID" gw_ready "http://127.0.0.1:$admin" || fatal "gateway $i became ready"
done
GW_PIDS=("${PIDS[@]: -2}")
pass "a gateway of two replicas (127.0.0.1:${GW_PORTS[0]}, 127.0.0.1:${GW_PORTS[1]})"
ENDPOINTS="https://127.0.0.1:${GW_PORTS[0]},https://127.0.0.1:${GW_PORTS[1]}"

# ---------------------------------------------------------------- Kamaji's setup

# What Kamaji's controller asks of an etcd DataStore, as root by client certificate.
as_root() { ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${GW_PORTS[0]}" --cacert "$TMP/ca.crt" \
	--cert "$TMP/root.crt" --key "$TMP/root.key" "$@"; }
setup() {
	as_root user add root --no-password && as_root user grant-role root root && as_root auth enable || return 1
	for t in a b; do
		as_root user add "u-$t" --no-password && as_root role add "$t" &&
			as_root role grant-permission "$t" readwrite "/$t/" --prefix && as_root user grant-role "u-$t" "$t" || return 1
	done
}
quiet_setup() { setup >"$TMP/setup.log" 2>&1; }
check "Kamaji's setup of tenants a and b through the gateway (users, roles, prefix grants)" quiet_setup
tenants_known() { curl -fsS "${GW_ADMIN[1]}/v1/tenants" | jq -e 'map(.name) == ["a","b"]' >/dev/null; }
wait_for "the second replica to read both tenants from the catalog" 20 "" tenants_known || true
check "both replicas know tenants a and b" tenants_known

# ---------------------------------------------------------------- two kube-apiservers

API_PIDS=()
APIS=()
for t in a b; do
	free_port api
	start "kube-apiserver-$t" "$APISERVER" \
		--etcd-servers="$ENDPOINTS" --etcd-prefix="/$t" \
		--etcd-cafile="$TMP/ca.crt" --etcd-certfile="$TMP/u-$t.crt" --etcd-keyfile="$TMP/u-$t.key" \
		--etcd-compaction-interval=0 \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api" --insecure-port=0 \
		--cert-dir="$TMP/apiserver-$t-certs" --tls-cert-file="$TMP/serving.crt" --tls-private-key-file="$TMP/serving.key" \
		--token-auth-file="$TMP/tokens.csv" --authorization-mode=RBAC \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$TMP/sa.pub" --service-account-signing-key-file="$TMP/sa.key" \
		--service-cluster-ip-range=10.96.0.0/24 --endpoint-reconciler-type=none --profiling=false --v=1
	API_PIDS+=("$LAST_PID")
	APIS+=("https://127.0.0.1:$api")
done

# req TENANT METHOD PATH [JSON-BODY]: sets STATUS and BODY.
req() {
	local api=${APIS[0]} method=$2 path=$3 data=${4:-}
	[[ $1 == b ]] && api=${APIS[1]}
	local args=(-sS --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN" -H "Accept: application/json"
		-o "$TMP/resp-$1" -w '%{http_code}' -X "$method")
	[[ -n $data ]] && args+=(-H "Content-Type: application/json" --data-binary "$data")
	rm -f "$TMP/resp-$1"
	STATUS=$(curl "${args[@]}" "$api$path") || STATUS=000
	BODY=$(cat "$TMP/resp-$1" 2>/dev/null || true)
}
for t in a b; do
	api_ready() { req "$1" GET /readyz && [[ $STATUS == 200 && $BODY == ok ]]; }
	pid=${API_PIDS[0]}
	[[ $t == b ]] && pid=${API_PIDS[1]}
	wait_for "kube-apiserver of tenant $t /readyz" 180 "$pid" api_ready "$t" || fatal "kube-apiserver of tenant $t became ready"
	pass "kube-apiserver of tenant $t ready through the gateway"
done

NS="gateway-e2e"
CM="/api/v1/namespaces/$NS/configmaps"
cm_json() { # name value [resourceVersion]
	jq -cn --arg ns "$NS" --arg n "$1" --arg v "$2" --arg rv "${3:-}" \
		'{apiVersion:"v1",kind:"ConfigMap",metadata:({name:$n,namespace:$ns}
		 + (if $rv == "" then {} else {resourceVersion:$rv} end)),data:{v:$v}}'
}
for t in a b; do
	req "$t" POST /api/v1/namespaces "$(jq -cn --arg n "$NS" '{apiVersion:"v1",kind:"Namespace",metadata:{name:$n}}')"
	check "tenant $t creates namespace $NS (HTTP $STATUS)" test "$STATUS" = 201
	for n in one two; do
		req "$t" POST "$CM" "$(cm_json "$n" "$t-$n")"
		check "tenant $t creates configmap $n (HTTP $STATUS)" test "$STATUS" = 201
	done
done
# Each tenant's objects are its own: same names, its own data, under its own prefix.
req a GET "$CM/one"
check "tenant a reads its own configmap one" test "$(jq -r .data.v <<<"$BODY")" = a-one
req b GET "$CM/one"
check "tenant b reads its own configmap one" test "$(jq -r .data.v <<<"$BODY")" = b-one
on() { # port prefix: keys there
	ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$1" get "$2" --prefix --keys-only 2>/dev/null | grep -c . || true
}
check "both tenants' objects are on east, under /a/ and /b/" test "$(on "$EAST_PORT" /a/configmaps/)" -ge 2 -a "$(on "$EAST_PORT" /b/configmaps/)" -ge 2

# ---------------------------------------------------------------- tenant a moves

req a GET "$CM/one"
ONE_BEFORE=$(jq -c '{rv: .metadata.resourceVersion, data}' <<<"$BODY")
ONE_RV=$(jq -r .rv <<<"$ONE_BEFORE")
req a GET "$CM"
LIST_RV=$(jq -r .metadata.resourceVersion <<<"$BODY")
curl -sS -N --max-time 170 --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN" \
	"${APIS[0]}$CM?watch=1&resourceVersion=$LIST_RV&timeoutSeconds=160" >"$TMP/watch-a.out" 2>"$TMP/watch-a.log" &
PIDS+=("$!")
WATCH_PID=$!

# Both tenants create configmaps one after another until told to stop.
LOAD_PIDS=()
for t in a b; do
	(
		i=0
		api=${APIS[0]}
		[[ $t == b ]] && api=${APIS[1]}
		while [[ ! -e $TMP/stop-load ]]; do
			i=$((i + 1))
			code=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' --cacert "$TMP/ca.crt" -H "Authorization: Bearer $TOKEN" \
				-H "Content-Type: application/json" -X POST --data-binary "$(cm_json "load-$i" "$i")" "$api$CM" || echo 000 0)
			echo "load-$i $code" >>"$TMP/load-$t.out"
		done
	) &
	PIDS+=("$!")
	LOAD_PIDS+=("$!")
done
load_count() { [[ -f $TMP/load-$1.out ]] && wc -l <"$TMP/load-$1.out" || echo 0; }
load_ahead() { (($(load_count "$1") >= $2)); }
wait_for "the create loads to start" 30 "" load_ahead a 10 || true

mig=$(curl -sS -X POST -H "Authorization: Bearer $(cat "$TMP/admin-token")" -H "Content-Type: application/json" \
	--data '{"to":"west"}' -w ' %{http_code}' "${GW_ADMIN[0]}/v1/tenants/a/migrations" || true)
check "POST /v1/tenants/a/migrations {to: west} is accepted (${mig##* })" test "${mig##* }" = 202
moved() { curl -fsS "${GW_ADMIN[0]}/v1/tenants/a" | jq -e '.migration.finishedUnixMs != null' >/dev/null; }
wait_for "tenant a's migration to end" 120 "" moved || true
VIEW=$(curl -fsS "${GW_ADMIN[0]}/v1/tenants/a" || true)
check "tenant a's migration succeeded ($(jq -c '.migration | {outcome, fenceMs, keysCopied, error}' <<<"$VIEW"))" \
	test "$(jq -r .migration.outcome <<<"$VIEW")" = Succeeded
serving() { curl -fsS "$1/v1/tenants/a" | jq -e '.servingFrom == "west"' >/dev/null; }
wait_for "the other replica to serve tenant a from west" 20 "" serving "${GW_ADMIN[1]}" || true
check "both replicas serve tenant a from west" serving "${GW_ADMIN[0]}"
check "(the second replica too)" serving "${GW_ADMIN[1]}"
after=$(load_count a)
wait_for "tenant a's load to go on after the move" 30 "" load_ahead a $((after + 10)) || true
touch "$TMP/stop-load"
wait "${LOAD_PIDS[@]}" 2>/dev/null || true
for t in a b; do
	bad=$(awk '$2 != 201' "$TMP/load-$t.out" | head -n 5 | paste -sd' ' - || true)
	slowest=$(awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { printf "%.0f ms", m * 1000 }' "$TMP/load-$t.out")
	check "every create of tenant $t during the move succeeded ($(load_count "$t") creates, slowest $slowest; failures: ${bad:-none})" test -z "$bad"
done

req a GET "$CM/one"
check "tenant a's configmap one has the same resourceVersion and data ($ONE_BEFORE)" \
	test "$(jq -c '{rv: .metadata.resourceVersion, data}' <<<"$BODY")" = "$ONE_BEFORE"
req a PUT "$CM/one" "$(cm_json one moved "$ONE_RV")"
check "an update with the pre-move resourceVersion $ONE_RV is accepted (HTTP $STATUS)" test "$STATUS" = 200
LOAD_A=$(awk '$2 == 201' "$TMP/load-a.out" | wc -l)
watch_has_update() {
	jq -s -e 'any(.[]; .type == "MODIFIED" and .object.metadata.name == "one" and .object.data.v == "moved")' \
		"$TMP/watch-a.out" >/dev/null 2>&1
}
wait_for "tenant a's pre-move watch to deliver the post-move update" 30 "$WATCH_PID" watch_has_update || true
check "the watch opened before the move delivered the update made after it" watch_has_update
check "that watch is still open (no relist)" kill -0 "$WATCH_PID"
check "that watch carried no ERROR event (no 410 Gone)" \
	test "$(jq -s '[.[] | select(.type == "ERROR")] | length' "$TMP/watch-a.out")" = 0
added=$(jq -s '[.[] | select(.type == "ADDED" and (.object.metadata.name | startswith("load-"))) | .object.metadata.name] | unique | length' "$TMP/watch-a.out")
check "the watch saw each of tenant a's creates once ($added of $LOAD_A)" test "$added" = "$LOAD_A"
check "west holds tenant a's objects" test "$(on "$WEST_PORT" /a/configmaps/)" -ge "$((LOAD_A + 2))"
check "west holds nothing of tenant b" test "$(on "$WEST_PORT" /b/)" = 0
req b GET "$CM/one"
check "tenant b still reads its configmap one (HTTP $STATUS)" test "$STATUS" = 200 -a "$(jq -r .data.v <<<"$BODY")" = b-one
check "both kube-apiservers were never restarted" kill -0 "${API_PIDS[@]}"
check "both gateway replicas still run" kill -0 "${GW_PIDS[@]}"
check "no gateway replica logged a panic" not_in_log panicked gateway-1.log
check "(nor the second)" not_in_log panicked gateway-2.log

[[ $FAILED -eq 0 ]] || dump_logs
