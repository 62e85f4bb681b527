# Isthmus: the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (tests/setup/deps.sh), build, and run.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build image demo test unit e2e smoke lint fmt fuzz clean-cache bench-netbridge bench-netbridge-deps images smoke-images bench-images bench-hv bench-hv-layouts bench-luks bench-move bench-inventory bench-dr

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

# The test server's boot smoke, then the image smoke (appliance + cloud node
# images, the move through them) when the images of this tree are cached;
# `make smoke-images` builds them first.
smoke: image
	bash image-build/test-server/smoke.sh
	@bash image-build/appliance/smoke.sh --if-cached

e2e: build image
	$(CARGO) test -p isthmus-lab -- --test-threads=1

test: build image lint unit smoke e2e
	@echo "make test: all green"

# Runs every cargo-fuzz target for FUZZ_SECONDS each (needs the nightly toolchain).
FUZZ_SECONDS ?= 60
FUZZ_DIRS := appliance/fuzz csc/fuzz hv/fuzz netbridge/fuzz proto/fuzz
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

# The CSL guest: plain vs LUKS qcow2 data disk in the same run (I/O measured
# inside the guest by fio: hv/bench/fio-image.sh), boot time, QMP snapshot
# save/load, QEMU RSS (never part of `make test`); last line JSON. Root only.
bench-hv: deps
	$(CARGO) run -q -p hv --example bench_hv

# LUKS disk layouts on the host without a guest (plain qcow2, qcow2-LUKS,
# luks driver above qcow2; qemu-storage-daemon + fio nbd) and the cipher as
# QEMU calls it (hv/README.md "Benchmark"); last line JSON. Root only.
bench-hv-layouts: deps
	bash hv/bench/luks-layouts.sh

# Making a blank LUKS qcow2: hv's own header on the cached template vs
# `qemu-img create` (PBKDF2 benchmark), 5 runs each, and the unlock at open
# (hv/README.md "LUKS headers"); last line JSON.
bench-luks: deps
	$(CARGO) run --release -q -p hv --example bench_luks_create

# Disk moves on the lab's internet link shaped to 1 Gbit/s (tc tbf): Isthmus's
# block transfer (`isthmus stage`) beside iperf3, rsync --sparse (daemon) and
# qemu-img convert to qemu-nbd; dedup of a same-base image; outage of a real
# move seen by 100 ms pings (never part of `make test`); last line JSON. Root only.
bench-move: deps image
	@bash tests/bench/move-deps.sh
	$(CARGO) build --release -p appliance --bin isthmus -p csc --bin isthmus-node -p isthmus-lab --example bench_move
	./target/release/examples/bench_move

# DR rounds of the lab's running source with QEMU dirty bitmaps and without
# them (ISTHMUS_DIRTY_BITMAPS=off), alternating in one run; last line JSON.
bench-dr: deps image
	$(CARGO) build --workspace --bins
	$(CARGO) build -p isthmus-lab --example bench_dr
	./target/debug/examples/bench_dr

# Inventory: 10 000 descriptor imports, and inspection of a 20 GiB sparse
# image (the test server grown with an ext4 data partition) beside
# virt-inspector (libguestfs, direct backend, TCG) in the same run; peak RSS
# (never part of `make test`); last line JSON.
bench-inventory: deps image
	@bash appliance/bench/inventory-deps.sh
	$(CARGO) build --release -p appliance --bin isthmus --example bench_inventory
	./target/release/examples/bench_inventory

# The product images (image-build/README.md): appliance qcow2, cloud node
# qcow2 and the appliance OVA, from the release binaries; cached under
# /var/cache/isthmus/ by recipe hash (a warm run takes seconds).
images: deps
	$(CARGO) build --release -p appliance --bin isthmus -p csc --bin isthmus-node
	@bash image-build/appliance/build.sh | tail -n 1
	@bash image-build/cloud-node/build.sh | tail -n 1
	@bash image-build/ova/build.sh | tail -n 1

# Boots the appliance image under QEMU (TCG) in network namespaces: console
# URL, HTTPS login with the one-time password, reboot keeps the store.
# `make test` runs it only when the images of this tree are cached.
smoke-images: images
	bash image-build/appliance/smoke.sh

# Sizes, cold/warm build times, boot-to-console-URL beside a stock Debian
# kernel + initramfs boot (never part of `make test`); last line JSON.
bench-images: images
	bash image-build/appliance/bench.sh

fmt:
	$(CARGO) fmt --all

clean-cache:
	rm -rf /var/cache/isthmus
