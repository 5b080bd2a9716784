# simplepush: common tasks. `make run` and `make test` work on a fresh machine with Rust installed
# (the Firefox end-to-end test also wants Debian's firefox-esr: see .ci/run).

CARGO ?= cargo
CONFIG ?= config.sample.toml

.PHONY: run build test lint unit firefox-test fmt clean

## Run the server on the embedded memory store (127.0.0.1:8080).
run:
	$(CARGO) run --release --bin simplepush -- --config $(CONFIG)

build:
	$(CARGO) build --workspace --all-targets

## Everything CI runs: format and lint checks, unit and integration tests, the Firefox test.
test: lint unit firefox-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

firefox-test:
	$(CARGO) build --bin simplepush
	python3 tests/firefox/firefox_e2e.py --server-bin target/debug/simplepush

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
