# kubestick: the two commands a newcomer runs are `make demo` and `make test`.
# Both install what they need on a Debian machine (run as root for the apt packages).

CARGO ?= cargo
OUT ?= out
EXAMPLE ?= examples/homelab.toml

.PHONY: demo test test-deps toolchain build lint unit bench clean

## demo: validate the reference cluster, print its plan and render every node into out/
demo: toolchain
	$(CARGO) build --release --locked
	./target/release/kubestick check $(EXAMPLE)
	./target/release/kubestick render $(EXAMPLE) -o $(OUT)

## test: formatting, lints, unit and integration tests with the real validators
test: toolchain test-deps lint
	$(CARGO) test --locked

## test-deps: validators (cloud-init, ignition-validate, systemd-analyze, shellcheck, keepalived, openssl)
test-deps:
	bash scripts/test-deps.sh

toolchain:
	@command -v rustup >/dev/null && rustup component add rustfmt clippy >/dev/null 2>&1 || true
	@command -v $(CARGO) >/dev/null || { echo "cargo is required: install Rust (https://rustup.rs) or 'apt-get install cargo'"; exit 1; }

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## bench: render time for a 100-node cluster (target < 50 ms); fetch of 200 MiB vs curl + sha256sum (target <= 1.2x)
bench: toolchain
	@command -v curl >/dev/null || apt-get install -y --no-install-recommends curl
	$(CARGO) bench --locked --bench render
	$(CARGO) bench --locked --bench fetch

clean:
	rm -rf $(OUT) target
