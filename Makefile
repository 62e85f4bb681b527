# Isthmus: the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (tests/setup/deps.sh), build, and run.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build image demo test unit e2e smoke lint fmt fuzz clean-cache bench-netbridge bench-netbridge-deps

all: build

deps:
	@bash tests/setup/deps.sh

build: deps
	$(CARGO) build --workspace --bins

# The test source server's disk image, cached under /var/cache/isthmus/.
image: deps
	@bash image-build/test-server/build.sh >/dev/null

demo: build image
	./target/debug/isthmus-lab

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --exclude isthmus-lab

smoke: image
	bash image-build/test-server/smoke.sh

e2e: build image
	$(CARGO) test -p isthmus-lab -- --test-threads=1

test: build image lint unit smoke e2e
	@echo "make test: all green"

# Runs every cargo-fuzz target for FUZZ_SECONDS each (needs the nightly toolchain).
FUZZ_SECONDS ?= 60
FUZZ_DIRS := appliance/fuzz csc/fuzz netbridge/fuzz
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	@for d in $(FUZZ_DIRS); do \
	  for t in $$(cd $$d && $(CARGO) +nightly fuzz list); do \
	    echo "== $$d $$t ($(FUZZ_SECONDS) s)"; \
	    (cd $$d/.. && $(CARGO) +nightly fuzz run --fuzz-dir fuzz $$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	  done; \
	done

# Isthmus beside plain veth, kernel VXLAN, OpenVPN tap and fastd in network
# namespaces (never part of `make test`). BENCH_SECONDS=5 per iperf3 run.
bench-netbridge-deps:
	@bash netbridge/bench/deps.sh

bench-netbridge: bench-netbridge-deps
	$(CARGO) build --release -p netbridge --example isthmus-bridge
	python3 netbridge/bench/bench.py target/release/examples/isthmus-bridge

fmt:
	$(CARGO) fmt --all

clean-cache:
	rm -rf /var/cache/isthmus
