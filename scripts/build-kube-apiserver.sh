#!/usr/bin/env bash
# Build kube-apiserver (and kubectl) v1.20.x offline from Debian bookworm's
# `kubernetes` source package, for cutover's kube-apiserver end-to-end tier.
#
# Usage: scripts/build-kube-apiserver.sh
#
# Environment:
#   CUTOVER_CACHE        cache root (default: $HOME/.cache/cutover); the
#                        source tree (~2 GB after a build) lives in $CACHE/src
#                        and the binaries in $CACHE/bin.
#   CUTOVER_BUILD_JOBS   parallelism for the Go toolchain (default: 2); each
#                        job can take ~1.3 GB RAM while linking kube-apiserver.
#   CUTOVER_K8S_SUITE    Debian suite to take the source from (default: bookworm).
#
# The only network access is to the Debian mirror already configured for apt:
# the deb-src entry is derived from the existing apt configuration. The last
# line on stdout is the path of the kube-apiserver binary; everything else goes
# to stderr. If that binary is already cached the script exits immediately.
set -euo pipefail

CACHE="${CUTOVER_CACHE:-$HOME/.cache/cutover}"
BIN_DIR="$CACHE/bin"
SRC_DIR="$CACHE/src"
APISERVER="$BIN_DIR/kube-apiserver"
KUBECTL="$BIN_DIR/kubectl"
JOBS="${CUTOVER_BUILD_JOBS:-2}"
SUITE="${CUTOVER_K8S_SUITE:-bookworm}"
GO_PKG=golang-1.19-go
GO_ROOT=/usr/lib/go-1.19
# Debian-packaged Go source for the one vendored library that must be newer
# (see patch_vendor).
REFLECT2_PKG=golang-github-modern-go-reflect2-dev
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
# Bump when the build recipe changes so stale cached binaries are rebuilt.
RECIPE="k8s-1.20/go1.19/reflect2-1.0.2"
STAMP="$BIN_DIR/.recipe"
# Everything except the final path goes to stderr so callers can capture stdout.
exec 3>&1 1>&2

log() { printf '[build-kube-apiserver] %s\n' "$*"; }
die() { log "ERROR: $*"; exit 1; }
done_path() { echo "$APISERVER" >&3; exit 0; }

cached() { [[ -x $APISERVER && -f $STAMP && $(<"$STAMP") == "$RECIPE" ]]; }

# Fast path: nothing to do when the binary is cached.
cached && done_path

mkdir -p "$BIN_DIR" "$SRC_DIR"
# Serialise concurrent invocations (e.g. two e2e runs) on the same cache.
exec 9>"$CACHE/.build.lock"
flock 9
cached && done_path

# apt operations need root; use sudo when we are not root.
as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

# Another apt/dpkg process may hold the locks (e.g. a provisioning run);
# retry instead of failing or killing it.
apt_retry() {
	local attempt
	for attempt in 1 2 3 4 5 6 7 8 9 10; do
		if as_root env DEBIAN_FRONTEND=noninteractive "$@" -o DPkg::Lock::Timeout=300; then
			return 0
		fi
		log "apt command failed (attempt $attempt), retrying in 15s: $*"
		sleep 15
	done
	die "apt command kept failing: $*"
}

pkg_installed() {
	[[ $(dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

# Build tools: Debian's Go 1.19 (the toolchain bookworm builds this package
# with), rsync and make (used by the kubernetes build scripts), dpkg-dev
# (dpkg-source, needed by `apt-get source`), and reflect2 (see patch_vendor).
ensure_build_deps() {
	local missing=() p
	for p in "$GO_PKG" "$REFLECT2_PKG" rsync make dpkg-dev ca-certificates; do
		pkg_installed "$p" || missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	# A fresh system may have no package lists at all.
	if ! apt-cache show "$GO_PKG" >/dev/null 2>&1; then
		apt_retry apt-get update
	fi
	log "installing build dependencies: ${missing[*]}"
	apt_retry apt-get install -y --no-install-recommends "${missing[@]}"
}

have_kubernetes_source() {
	# No grep -q: an early exit would SIGPIPE apt-cache and trip pipefail.
	apt-cache showsrc kubernetes 2>/dev/null | grep '^Package: kubernetes$' >/dev/null
}

# Print the Signed-By value of entry $2 in apt source file $1 (a path only;
# inline keys are not copied, apt then falls back to trusted.gpg.d).
# For deb822 files entry N is the N-th stanza, for one-line files line N.
signed_by_of() {
	local file=$1 entry=$2
	if [[ $file == *.sources ]]; then
		awk -v want="$entry" '
			/^[[:space:]]*$/ { if (seen) { n++; seen = 0 }; next }
			/^#/ { next }
			{ seen = 1 }
			n + 1 == want && tolower($1) == "signed-by:" && NF == 2 { print $2; exit }
		' "$file"
	else
		sed -n "${entry}p" "$file" | sed -n 's/.*signed-by=\([^] ]*\).*/\1/p'
	fi
}

# Add a deb-src entry for $SUITE/main on the mirror apt already uses for the
# main archive; never hard-code a mirror host.
ensure_deb_src() {
	have_kubernetes_source && return 0
	local codename target uri sourcesentry signed_by file
	# shellcheck disable=SC1091 # system file, sourced in a subshell
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	# Prefer a deb entry for $SUITE itself, else the host's main release.
	# shellcheck disable=SC2016 # $(...) are apt format fields, not shell
	target=$(apt-get indextargets --format '$(TARGET_OF)|$(IDENTIFIER)|$(COMPONENT)|$(RELEASE)|$(REPO_URI)|$(SOURCESENTRY)' |
		awk -F'|' -v s="$SUITE" -v c="$codename" '
			$1 == "deb" && $2 == "Packages" && $3 == "main" {
				if ($4 == s && !a) a = $0
				if ($4 == c && !b) b = $0
			}
			END { if (a) print a; else if (b) print b }')
	[[ -n $target ]] || die "no Debian 'main' deb entry for $SUITE or $codename in the apt configuration"
	IFS='|' read -r _ _ _ _ uri sourcesentry <<<"$target"
	signed_by=$(signed_by_of "${sourcesentry%:*}" "${sourcesentry##*:}" 2>/dev/null || true)
	file=/etc/apt/sources.list.d/cutover-deb-src.sources
	log "adding deb-src entry $uri $SUITE main -> $file"
	{
		echo "# Added by cutover scripts/build-kube-apiserver.sh (derived from ${sourcesentry})"
		echo "Types: deb-src"
		echo "URIs: $uri"
		echo "Suites: $SUITE"
		echo "Components: main"
		if [[ -n $signed_by ]]; then echo "Signed-By: $signed_by"; fi
	} | as_root tee "$file" >/dev/null
	# Refresh only the new entry (leave the other lists alone).
	local parts
	parts=$(mktemp -d)
	cp "$file" "$parts/"
	apt_retry apt-get update -o Dir::Etc::SourceList=/dev/null \
		-o Dir::Etc::SourceParts="$parts" -o APT::Get::List-Cleanup=0
	rm -rf "$parts"
	have_kubernetes_source || die "apt-cache showsrc kubernetes still finds nothing after adding $file"
}

# Unpack the source package into $SRC_DIR; a marker makes re-runs skip this
# and lets an interrupted extraction be redone from scratch.
fetch_source() {
	local dirs
	shopt -s nullglob
	dirs=("$SRC_DIR"/kubernetes-*/.cutover-extracted)
	shopt -u nullglob
	if [[ ${#dirs[@]} -gt 0 ]]; then
		KROOT=$(dirname "${dirs[0]}")
		log "using unpacked source $KROOT"
		return 0
	fi
	ensure_deb_src
	rm -rf "$SRC_DIR"/kubernetes[-_]*
	local sandbox=()
	# As root apt would try (and fail) to drop privileges to _apt for a
	# download into a root-owned directory; it is harmless but noisy.
	[[ $EUID -eq 0 ]] && sandbox=(-o APT::Sandbox::User=root)
	log "downloading and unpacking the kubernetes source package into $SRC_DIR"
	(cd "$SRC_DIR" && apt-get "${sandbox[@]}" source "kubernetes/$SUITE")
	shopt -s nullglob
	dirs=("$SRC_DIR"/kubernetes-*/)
	shopt -u nullglob
	[[ ${#dirs[@]} -eq 1 ]] || die "expected one unpacked kubernetes-* directory in $SRC_DIR"
	KROOT=${dirs[0]%/}
	touch "$KROOT/.cutover-extracted"
}

# Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, which relies
# on runtime internals that changed in Go 1.18: built with Go 1.19 the
# apiserver panics (nil pointer in reflect2.Type2 via json-iterator) on the
# first request whose JSON decodes into a map, e.g. creating a ConfigMap.
# reflect2 v1.0.2 fixes this with the same API; bookworm ships it as a Debian
# package, so swap the vendored copy for it. Idempotent.
patch_vendor() {
	local dst="$KROOT/vendor/github.com/modern-go/reflect2" f
	[[ -f $REFLECT2_SRC/go_above_118.go ]] || die "$REFLECT2_SRC lacks go_above_118.go (need reflect2 >= 1.0.2)"
	if [[ -f $dst/go_above_118.go ]]; then
		return 0
	fi
	log "replacing vendored reflect2 v1.0.1 with Debian's $REFLECT2_PKG (Go >= 1.18 support)"
	rm -f "$dst"/*.go "$dst"/*.s
	for f in "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s; do
		[[ $f == *_test.go ]] || cp "$f" "$dst/"
	done
}

build() {
	cd "$KROOT"
	# The upstream build scripts force GOPATH mode (GO111MODULE=off) and set
	# up their own GOPATH/GOCACHE under _output/. CGO is not needed (static
	# binaries, as the Debian package builds them). The version comes from
	# the `git archive` stamp in hack/lib/version.sh, so no .git is needed.
	#
	# Parallelism: GOMAXPROCS bounds each compiler, `-p` the number of
	# concurrent compile/link steps. The build scripts derive build tags from
	# GOFLAGS by a regex that assumes -tags= is present, so pass an explicit
	# (default) tag alongside -p to keep that parsing sane.
	local env=(
		PATH="$GO_ROOT/bin:$PATH"
		GO111MODULE=off
		CGO_ENABLED=0
		GOMAXPROCS="$JOBS"
		GOFLAGS="-p=$JOBS -tags=selinux"
	)
	log "go: $(env "${env[@]}" go version)"
	log "make generated_files (about 1 minute)"
	env "${env[@]}" make generated_files
	log "make WHAT=cmd/kube-apiserver (about 3 minutes)"
	env "${env[@]}" make WHAT=cmd/kube-apiserver
	install_bin _output/bin/kube-apiserver "$APISERVER.tmp"
	# kubectl shares most packages with kube-apiserver, so it costs ~20s more;
	# it is optional for the e2e tier, so a failure here is only a warning.
	log "make WHAT=cmd/kubectl"
	if env "${env[@]}" make WHAT=cmd/kubectl; then
		install_bin _output/bin/kubectl "$KUBECTL"
	else
		log "WARNING: kubectl build failed; continuing without it"
	fi
	# kube-apiserver and the stamp go last: together they mean "complete".
	mv -f "$APISERVER.tmp" "$APISERVER"
	echo "$RECIPE" >"$STAMP"
}

install_bin() {
	cp "$1" "$2.partial"
	chmod 755 "$2.partial"
	mv -f "$2.partial" "$2"
}

ensure_build_deps
fetch_source
patch_vendor
build
version=$("$APISERVER" --version)
log "built $version"
[[ $version == "Kubernetes v1.20."* ]] || log "WARNING: expected v1.20.x, got: $version"
done_path
