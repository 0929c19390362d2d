#!/usr/bin/env bash
# Installs what cutover's demo and tests need and the machine lacks, from Debian's
# packages: etcd 3.4 (server and etcdctl), protoc (the etcd-client test dependency
# compiles its protos with it), curl and openssl (the end-to-end tier). Then etcd 3.5,
# which the tiers also run against, into a private cache without installing it
# (scripts/etcd35.sh). Extra arguments name further packages to install if the command
# of the same name is missing (`make instructions` asks for valgrind this way).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v jq >/dev/null || need+=(jq)
# promtool checks and unit-tests deploy/prometheus-rules.yaml (tests/it/deploy.rs).
command -v promtool >/dev/null || need+=(prometheus)
for extra in "$@"; do
  command -v "$extra" >/dev/null || need+=("$extra")
done

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Needs no root: it downloads into the user's cache.
"$here/etcd35.sh" >/dev/null
