# Shared by the end-to-end scripts: bookkeeping (pass/fail/check), process start and
# clean-up, polling, ports. Functions only: the sourcing script sets ROOT, PASSED, FAILED,
# PIDS and TMP, and traps EXIT with cleanup once its arguments are checked.

log() { printf '[e2e] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- bookkeeping

pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*"; }
# check DESCRIPTION COMMAND...: run COMMAND, record pass/fail, never abort.
check() {
	local desc=$1
	shift
	if "$@"; then pass "$desc"; else fail "$desc"; fi
}

dump_logs() {
	local f
	for f in "$TMP"/*.log; do
		# openssl's log is only interesting when key generation failed.
		[[ -f $f && ($f != */openssl.log || ! -f $TMP/sa.pub) ]] || continue
		printf -- '----- last 40 lines of %s -----\n' "$(basename "$f")" >&2
		tail -n 40 "$f" >&2 || true
	done
}

# Setup failures are fatal: count one failure and exit (the trap cleans up).
fatal() {
	fail "$*"
	dump_logs
	exit 1
}

cleanup() {
	local status=$? pid i t
	trap - EXIT INT TERM
	set +e
	# Stop in reverse start order (watch, kube-apiserver, cutover, etcd) so each
	# process loses its clients before its backend; force after 5s.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		pid=${PIDS[i]}
		kill -TERM "$pid" 2>/dev/null || continue
		for ((t = 0; t < 50; t++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	# An unexpected error (set -e) counts as a failure too.
	if [[ $status -ne 0 && $FAILED -eq 0 ]]; then
		FAILED=1
		printf 'FAIL: script aborted with status %s\n' "$status"
		dump_logs
	fi
	if [[ -n $TMP ]]; then
		if [[ ${CUTOVER_E2E_KEEP:-0} == 1 ]]; then
			log "keeping $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
	echo "$PASSED passed, $FAILED failed"
	[[ $FAILED -eq 0 ]] && exit 0
	exit 1
}

# Poll COMMAND every 0.2s until it succeeds or TIMEOUT seconds pass; also give
# up early when the process PID (if non-empty) has exited.
wait_for() {
	local desc=$1 timeout=$2 pid=$3
	shift 3
	local deadline=$((SECONDS + timeout))
	while ! "$@" 2>/dev/null; do
		if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
			log "process $pid exited while waiting for: $desc"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for: $desc"
			return 1
		fi
		sleep 0.2
	done
}

# Pick an unused 127.0.0.1 TCP port below the Linux ephemeral range: nothing
# must accept a connection on it. Sets the variable named by $1.
USED_PORTS=" "
free_port() {
	local p _
	for _ in {1..200}; do
		p=$((20000 + RANDOM % 12000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			USED_PORTS+="$p "
			printf -v "$1" %s "$p"
			return 0
		fi
	done
	fatal "no free port found"
}

not_in_log() { ! grep -q -- "$1" "$TMP/$2"; }

# start NAME COMMAND...: run in the background, output to $TMP/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$TMP/$name.log" 2>&1 &
	PIDS+=("$!")
	LAST_PID=$!
	log "started $name (pid $LAST_PID): $*"
}

