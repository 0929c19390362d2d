# cutover: the two commands that matter are `make demo` and `make test`.
# Both install what is missing first (Debian packages, via scripts/install-deps.sh).

CARGO ?= cargo
# Tests start real etcd servers: two at a time fit this size of machine.
TEST_THREADS ?= 2

.PHONY: all deps build release demo test lint unit it soak-short e2e soak bench fmt clippy clean

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
## schedule, kube-apiserver end to end).
test: deps lint unit it soak-short e2e

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

it:
	$(CARGO) test --features failpoints --test it -- --test-threads=$(TEST_THREADS) --skip soak::

## soak-short: the fault-schedule soak's CI schedule (two fixed seeds, 45 s each), alone
## on the machine.
soak-short:
	$(CARGO) test --features failpoints --test it soak:: -- --test-threads=1 --nocapture

## soak: the fault-schedule soak alone, long. SEED=<hex>|random (default random), DURATION
## seconds in all (default 1800), ROUND seconds per seed (default 120). Every round prints
## its seed; a failing one replays with SEED=<it> DURATION=<its ROUND>.
SEED ?= random
DURATION ?= 1800
ROUND ?= 120
soak: deps
	@end=$$(( $$(date +%s) + $(DURATION) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
	  round=$$((round + 1)); \
	  echo "soak round $$round"; \
	  CUTOVER_SOAK_SEED=$(SEED) CUTOVER_SOAK_SECS=$(ROUND) $(CARGO) test --features failpoints --test it soak:: -- --nocapture --test-threads=1 || exit 1; \
	  if [ "$(SEED)" != random ]; then break; fi; \
	done

## e2e: kube-apiserver (built offline from Debian's source package, cached) through cutover.
e2e: deps build
	tests/e2e/kube-apiserver.sh target/debug/cutover

## bench: latency/throughput against direct etcd and etcd's grpc-proxy.
bench: deps
	$(CARGO) bench --bench overhead

fmt:
	$(CARGO) fmt

clippy:
	$(CARGO) clippy --all-targets --features failpoints

clean:
	$(CARGO) clean
