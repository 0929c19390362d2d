# cutover: the two commands that matter are `make demo` and `make test`.
# Both install what is missing first (Debian packages, via scripts/install-deps.sh).

CARGO ?= cargo
# Tests start real etcd servers: two at a time fit this size of machine.
TEST_THREADS ?= 2

# The etcd the it, soak-short, soak and e2e tiers run against: 3.4 is the system's
# (Debian bookworm's etcd-server/etcd-client), 3.5 is Debian trixie's, unpacked by
# scripts/etcd35.sh into the cache below and put first on PATH. The targets it-3.4,
# it-3.5, soak-short-3.4, ... pick one for a single tier. The tests read the same
# variable from the environment to check the etcd they start. (No name starting with
# ETCD: etcd takes ETCD_* variables as flags, and the e2e script ETCD as the binary.)
CUTOVER_ETCD_VERSION ?= 3.4
CUTOVER_CACHE ?= $(HOME)/.cache/cutover
ETCD35_BIN = $(CUTOVER_CACHE)/etcd-3.5/bin
ifeq ($(CUTOVER_ETCD_VERSION),3.5)
ETCD_ENV = CUTOVER_ETCD_VERSION=3.5 PATH="$(ETCD35_BIN):$$PATH"
else ifeq ($(CUTOVER_ETCD_VERSION),3.4)
ETCD_ENV = CUTOVER_ETCD_VERSION=3.4
else
$(error CUTOVER_ETCD_VERSION must be 3.4 or 3.5, not $(CUTOVER_ETCD_VERSION))
endif
# The first line of a tier's log says which etcd (and etcdctl) it runs against.
ETCD_BANNER = @printf '== %s against %s, %s (%s)\n' '$@' \
	"$$(env $(ETCD_ENV) etcd --version | head -n 1)" \
	"$$(env $(ETCD_ENV) etcdctl version | head -n 1)" \
	"$$(env $(ETCD_ENV) sh -c 'command -v etcd')"

.PHONY: all deps build release demo test lint unit it soak-short e2e soak bench instructions fmt clippy clean
.PHONY: etcd-3.4 etcd-3.5 it-3.4 it-3.5 soak-short-3.4 soak-short-3.5 e2e-3.4 e2e-3.5

all: build

deps:
	@scripts/install-deps.sh

build:
	$(CARGO) build --bin cutover

release:
	$(CARGO) build --release --bin cutover

## demo: local etcd, cutover in front of it, traffic through it, and what cutover saw.
demo: deps release
	scripts/demo.sh target/release/cutover

## test: every tier (lint, unit, integration against real etcd, the soak's short
## schedule, kube-apiserver end to end), the last three against etcd 3.4 and then 3.5.
test: deps lint unit it-3.4 soak-short-3.4 e2e-3.4 it-3.5 soak-short-3.5 e2e-3.5

## lint: formatting, clippy with warnings as errors (with and without failpoints), and
## the benches built, so that none of them rots.
lint:
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 || rustup component add rustfmt clippy
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings
	$(CARGO) build --benches

unit:
	$(CARGO) test --lib --bins

## etcd-3.4, etcd-3.5: make sure that etcd version is at hand.
etcd-3.4:
	@command -v etcd >/dev/null && command -v etcdctl >/dev/null || scripts/install-deps.sh

etcd-3.5:
	@scripts/etcd35.sh >/dev/null

## it-3.4, it-3.5, soak-short-3.4, ...: one tier against one etcd version.
it-3.4 it-3.5: it-%:
	@$(MAKE) --no-print-directory it CUTOVER_ETCD_VERSION=$*

soak-short-3.4 soak-short-3.5: soak-short-%:
	@$(MAKE) --no-print-directory soak-short CUTOVER_ETCD_VERSION=$*

e2e-3.4 e2e-3.5: e2e-%:
	@$(MAKE) --no-print-directory e2e CUTOVER_ETCD_VERSION=$*

it: etcd-$(CUTOVER_ETCD_VERSION)
	$(ETCD_BANNER)
	env $(ETCD_ENV) $(CARGO) test --features failpoints --test it -- --test-threads=$(TEST_THREADS) --skip soak::

## soak-short: the fault-schedule soak's CI schedule (two fixed seeds, 45 s each), alone
## on the machine.
soak-short: etcd-$(CUTOVER_ETCD_VERSION)
	$(ETCD_BANNER)
	env $(ETCD_ENV) $(CARGO) test --features failpoints --test it soak:: -- --test-threads=1 --nocapture

## soak: the fault-schedule soak alone, long. SEED=<hex>|random (default random), DURATION
## seconds in all (default 1800), ROUND seconds per seed (default 120). Every round prints
## its seed; a failing one replays with SEED=<it> DURATION=<its ROUND>.
SEED ?= random
DURATION ?= 1800
ROUND ?= 120
soak: deps etcd-$(CUTOVER_ETCD_VERSION)
	$(ETCD_BANNER)
	@end=$$(( $$(date +%s) + $(DURATION) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
	  round=$$((round + 1)); \
	  echo "soak round $$round"; \
	  env $(ETCD_ENV) CUTOVER_SOAK_SEED=$(SEED) CUTOVER_SOAK_SECS=$(ROUND) $(CARGO) test --features failpoints --test it soak:: -- --nocapture --test-threads=1 || exit 1; \
	  if [ "$(SEED)" != random ]; then break; fi; \
	done

## e2e: kube-apiserver (built offline from Debian's source package, cached) through cutover:
## a sidecar, then two tenants' apiservers through a gateway of two replicas.
e2e: deps build etcd-$(CUTOVER_ETCD_VERSION)
	$(ETCD_BANNER)
	env $(ETCD_ENV) tests/e2e/kube-apiserver.sh target/debug/cutover
	env $(ETCD_ENV) tests/e2e/gateway.sh target/debug/cutover

## bench: latency/throughput against direct etcd and etcd's grpc-proxy.
bench: deps
	$(CARGO) bench --bench overhead

## instructions: instructions per forwarded request (callgrind), cutover and the h2-relay.
instructions:
	@scripts/install-deps.sh valgrind
	$(CARGO) bench --bench instructions

fmt:
	$(CARGO) fmt

clippy:
	$(CARGO) clippy --all-targets --features failpoints

clean:
	$(CARGO) clean
