# Isthmus: the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (tests/setup/deps.sh), build, and run.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build image demo test unit e2e smoke lint fmt clean-cache

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

fmt:
	$(CARGO) fmt --all

clean-cache:
	rm -rf /var/cache/isthmus
