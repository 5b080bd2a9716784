# simplepush: common tasks. `make run` and `make test` work on a fresh machine with Rust installed
# (the tests also want Debian's memcached and firefox-esr: see .ci/run).

CARGO ?= cargo
CONFIG ?= config.sample.toml

.PHONY: run build test lint unit firefox-test bench scale soak fuzz fmt clean

## Run the server on the embedded durable store in ./data (127.0.0.1:8080).
run:
	$(CARGO) run --release --bin simplepush -- --config $(CONFIG)

build:
	$(CARGO) build --workspace --all-targets

## Everything CI runs: format and lint checks, unit and integration tests, the Firefox test.
test: lint unit firefox-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The integration suites run three times: on the memory store, on the disk store (a data directory
# per test) and on a real memcached that each test starts for itself (tests/memcached*.rs and
# tests/cluster.rs always use memcached, tests/disk.rs the disk store).
# `--workspace` on every run: the same feature set as the first, so nothing is built twice.
SUITES = --test protocol --test endpoint --test concurrency --test webpush --test limits --test reliability --test broadcasts --test wake --test rate_limit
unit:
	$(CARGO) test --workspace
	PUSH_TEST_BACKEND=disk $(CARGO) test --workspace $(SUITES)
	PUSH_TEST_BACKEND=memcached $(CARGO) test --workspace $(SUITES)

firefox-test:
	$(CARGO) build --workspace --bin simplepush
	python3 tests/firefox/firefox_e2e.py --server-bin target/debug/simplepush

## Standard benchmarks (about 2 minutes per run; needs jq and curl): appends the figures to BENCHMARKS.md.
## BENCH_WORKERS=1 make bench measures a single event loop.
bench:
	bash loadtest/bench.sh BENCHMARKS.md

## 200,000 connections: 11 cluster nodes sharing memcached on this machine; appends to BENCHMARKS.md.
## SCALE_CONNECTIONS=1000000 make scale: 55 nodes, a million devices (loadtest/scale.sh says what else).
scale:
	bash loadtest/scale.sh BENCHMARKS.md

## Soak: 10 minutes of churn (SOAK_SECS) over 6,000 devices with PUTs flowing, in two identical rounds;
## fails if an accepted notification is lost or the server's RSS grows from round to round; appends
## to BENCHMARKS.md. SOAK_BACKEND=memcached uses a memcached it starts; see loadtest/README.md.
soak:
	bash loadtest/soak.sh BENCHMARKS.md

## Fuzz each target for FUZZ_SECS seconds (needs `cargo install cargo-fuzz`; RUSTC_BOOTSTRAP lets
## stable Rust take its nightly flags). Seeds: fuzz/corpus/<target>; new inputs go to
## fuzz/target/corpus/<target>, crashes to fuzz/artifacts/<target>/. See fuzz/README.md.
FUZZ_SECS ?= 60
FUZZ_TARGETS ?= client_message http_request token
fuzz:
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t $(CURDIR)/fuzz/target/corpus/$$t $(CURDIR)/fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECS) -max_len=16384 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
	    -print_final_stats=1 || exit 1; \
	done

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
