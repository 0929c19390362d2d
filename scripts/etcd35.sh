#!/usr/bin/env bash
# Fetch etcd 3.5 (server and etcdctl) from Debian trixie's etcd-server and
# etcd-client packages into a private cache, next to the system's etcd 3.4
# (bookworm), without installing anything: the test tiers run against it when
# its bin folder comes first on PATH (make it-3.5, make e2e CUTOVER_ETCD_VERSION=3.5, ...).
#
# Usage: scripts/etcd35.sh
#
# Environment:
#   CUTOVER_CACHE       cache root (default: $HOME/.cache/cutover), shared with
#                       scripts/build-kube-apiserver.sh; etcd 3.5 lives in
#                       $CACHE/etcd-3.5, its binaries in $CACHE/etcd-3.5/bin.
#   CUTOVER_ETCD_SUITE  Debian suite to take the packages from (default: trixie).
#
# apt runs with its own sources list, package lists and cache under
# $CACHE/etcd-3.5/apt, so the system's apt state is neither read for sources
# nor changed. The only network access is to the Debian mirror the system's
# apt configuration already uses for its main archive (read at run time). No
# root needed. The last line on stdout is the bin folder; everything else goes
# to stderr. If the binaries are already cached the script exits immediately.
set -euo pipefail

CACHE="${CUTOVER_CACHE:-$HOME/.cache/cutover}"
DIR="$CACHE/etcd-3.5"
BIN_DIR="$DIR/bin"
SUITE="${CUTOVER_ETCD_SUITE:-trixie}"
PACKAGES=(etcd-server etcd-client)
exec 3>&1 1>&2

log() { printf '[etcd35] %s\n' "$*"; }
die() { log "ERROR: $*"; exit 1; }
done_path() { echo "$BIN_DIR" >&3; exit 0; }

# The cached binaries count only if both run here and report 3.5. (Their output is
# read whole: grep -q would stop reading early, and with pipefail the writer's SIGPIPE
# would count as a failure.)
cached() {
	local etcd etcdctl
	[[ -x $BIN_DIR/etcd && -x $BIN_DIR/etcdctl ]] || return 1
	etcd=$("$BIN_DIR/etcd" --version 2>/dev/null) || return 1
	etcdctl=$("$BIN_DIR/etcdctl" version 2>/dev/null) || return 1
	[[ $etcd == "etcd Version: 3.5."* && $etcdctl == "etcdctl version: 3.5."* ]]
}

cached && done_path

mkdir -p "$DIR"
# Serialise concurrent invocations on the same cache.
exec 9>"$DIR/.lock"
flock 9
cached && done_path

# Print "URI|SIGNED-BY" of the system's main Debian archive: the deb entry for
# the host's release with a main component. Signed-By is empty when the entry
# has none (or an inline key); then the distribution keyring is used.
system_mirror() {
	local codename target uri entry file n signed_by=""
	# shellcheck disable=SC1091 # system file, sourced in a subshell
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release"
	# shellcheck disable=SC2016 # $(...) are apt format fields, not shell
	target=$(apt-get indextargets --format '$(TARGET_OF)|$(IDENTIFIER)|$(COMPONENT)|$(RELEASE)|$(REPO_URI)|$(SOURCESENTRY)' |
		awk -F'|' -v c="$codename" '
			$1 == "deb" && $2 == "Packages" && $3 == "main" && $4 == c { print; exit }')
	[[ -n $target ]] || die "no deb entry for $codename main in the apt configuration"
	IFS='|' read -r _ _ _ _ uri entry <<<"$target"
	file=${entry%:*}
	n=${entry##*:}
	if [[ $file == *.sources ]]; then
		signed_by=$(awk -v want="$n" '
			/^[[:space:]]*$/ { if (seen) { k++; seen = 0 }; next }
			/^#/ { next }
			{ seen = 1 }
			k + 1 == want && tolower($1) == "signed-by:" && NF == 2 { print $2; exit }
		' "$file" 2>/dev/null || true)
	elif [[ -f $file ]]; then
		signed_by=$(sed -n "${n}p" "$file" | sed -n 's/.*signed-by=\([^] ]*\).*/\1/p')
	fi
	[[ -f $signed_by ]] || signed_by=""
	echo "$uri|$signed_by"
}

fetch() {
	local mirror uri signed_by apt=$DIR/apt debs=$DIR/debs root=$DIR/root
	mirror=$(system_mirror)
	IFS='|' read -r uri signed_by <<<"$mirror"
	if [[ -z $signed_by && -f /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
		signed_by=/usr/share/keyrings/debian-archive-keyring.gpg
	fi
	rm -rf "$apt" "$debs" "$root"
	mkdir -p "$apt/sources.list.d" "$apt/preferences.d" "$apt/lists/partial" \
		"$apt/cache/archives/partial" "$debs" "$root"
	{
		echo "Types: deb"
		echo "URIs: $uri"
		echo "Suites: $SUITE"
		echo "Components: main"
		if [[ -n $signed_by ]]; then echo "Signed-By: $signed_by"; fi
	} >"$apt/sources.list.d/$SUITE.sources"
	local opts=(
		-o Dir::Etc::SourceList=/dev/null
		-o Dir::Etc::SourceParts="$apt/sources.list.d"
		-o Dir::Etc::Preferences=/dev/null
		-o Dir::Etc::PreferencesParts="$apt/preferences.d"
		-o Dir::State::Lists="$apt/lists"
		-o Dir::Cache="$apt/cache"
		-o APT::Get::List-Cleanup=0
		-o Acquire::Languages=none
	)
	# As root apt would hand the download to the _apt user, who cannot write
	# into a user's cache folder.
	[[ $EUID -eq 0 ]] && opts+=(-o APT::Sandbox::User=root)
	log "apt-get update: $uri $SUITE main (lists in $apt)"
	apt-get "${opts[@]}" update -qq
	log "downloading ${PACKAGES[*]} from $SUITE"
	(cd "$debs" && apt-get "${opts[@]}" download "${PACKAGES[@]}")
	local deb
	for deb in "$debs"/*.deb; do
		log "unpacking $(basename "$deb")"
		dpkg -x "$deb" "$root"
	done
	mkdir -p "$BIN_DIR"
	ln -sfn ../root/usr/bin/etcd "$BIN_DIR/etcd"
	ln -sfn ../root/usr/bin/etcdctl "$BIN_DIR/etcdctl"
	if [[ -x $root/usr/bin/etcdutl ]]; then ln -sfn ../root/usr/bin/etcdutl "$BIN_DIR/etcdutl"; fi
}

fetch
cached || {
	"$BIN_DIR/etcd" --version || true
	die "the unpacked etcd does not run here or is not 3.5"
}
log "$("$BIN_DIR/etcd" --version | head -n 1), $("$BIN_DIR/etcdctl" version | head -n 1) in $BIN_DIR"
rm -rf "$DIR/apt" "$DIR/debs"
done_path
