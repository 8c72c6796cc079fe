# The two commands of the README. Each installs what it needs first.
#
#   make run    build and run udp-fanout on examples/quickstart.yaml (userspace, loopback, no root)
#   make test   formatting, lints and the whole test suite (what CI runs)

CONFIG ?= examples/quickstart.yaml

.PHONY: run test build deps-build deps-test lint

run: deps-build
	cargo run --release --bin udp-fanout -- --config $(CONFIG)

build: deps-build
	cargo build --release --workspace

test: deps-test lint
	cargo test --workspace --all-targets
	cargo test --workspace --doc

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

deps-build:
	@scripts/install-deps.sh build

deps-test:
	@scripts/install-deps.sh test
