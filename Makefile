# keyward developer targets. `make test` is the whole suite on a fresh machine.
.PHONY: test test-fips setup unit demo image image-fips kind-load e2e crds chart-test fuzz mutants

IMAGE ?= keyward:dev
KIND_CLUSTER ?= keyward

# Install what the tests need (idempotent), then run every test, then the `fips` build's
# share (test-fips).
test: setup
	KEYWARD_PYTHON=$(CURDIR)/.venv/bin/python cargo test --workspace --all-targets
	$(MAKE) test-fips

# The `fips` build (docs/fips.md): unit tests (every crypto entry point checked with the
# module's service indicator), the vector suite, and the user story with the fips binaries.
test-fips: setup
	KEYWARD_PYTHON=$(CURDIR)/.venv/bin/python cargo test -p keyward --features fips --lib --test vectors --test story

setup:
	tests/setup.sh

unit:
	cargo test --workspace --lib

# The main job: the whole user story as a watchable demo (kind cluster if reachable,
# otherwise the embedded test apiserver). The demo lives in its own crate (crates/keyward-demo)
# and runs the product binary built beside it.
demo: setup
	cargo build --release -p keyward --bin keyward
	KEYWARD_PYTHON=$(CURDIR)/.venv/bin/python cargo run --release -p keyward-demo -- --keyward-bin $(CURDIR)/target/release/keyward $(DEMO_ARGS)

# The CRD YAML from the Rust types, into crds/ and the chart (which applies them as templates).
crds:
	cargo run -p keyward -- crdgen
	cp crds/*.yaml charts/keyward/files/crds/

# Multi-stage build (Dockerfile); BuildKit for the cargo cache mounts.
image:
	DOCKER_BUILDKIT=1 docker build -t $(IMAGE) .

# The FIPS image (docs/fips.md): same Dockerfile, FEATURES=fips, tag suffixed -fips.
image-fips:
	DOCKER_BUILDKIT=1 docker build --build-arg FEATURES=fips -t $(IMAGE)-fips .

kind-load: image
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

# kind cluster + CSI driver + image + chart + mount/rotate/refuse checks; SKIPPED without Docker.
e2e:
	IMAGE=$(IMAGE) KIND_CLUSTER=$(KIND_CLUSTER) tests/e2e/kind-e2e.sh

# Only the chart checks (render, strict lint, validate, schema, RBAC), without cargo.
chart-test: setup
	.venv/bin/python tests/py/chart_test.py

# The fuzzing harnesses of tests/fuzz with many more cases than `make test` runs (FUZZ_CASES).
FUZZ_CASES ?= 200000
fuzz:
	KEYWARD_FUZZ_CASES=$(FUZZ_CASES) cargo test --release --test fuzz -- --nocapture

# Mutation testing of the security-critical core (scope and reviewed exceptions in
# .cargo/mutants.toml, results in docs/mutants.md). The whole scope is ~790 mutants, hours on
# 2 cores: narrow it with MUTANTS_ARGS, e.g. "--shard 0/8" or "--no-config -f src/lifecycle.rs --cargo-arg=--lib".
mutants: setup
	cargo mutants --in-place $(MUTANTS_ARGS)
