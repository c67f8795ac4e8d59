# sluice: `make run` starts a demo (two mock-llm upstreams + sluice), `make test` runs everything.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PYTHON := $(VENV)/bin/python
# Debian packages: the build needs cmake (zlib-ng in pingora's flate2); the tests and benches
# also need redis-server (shared cache and limits), prometheus, nginx and wrk (the load
# benchmark's baseline and client). `make run` installs only what the build needs.
BUILD_PACKAGES := cmake:cmake
APT_PACKAGES := $(BUILD_PACKAGES) g++:g++ redis-server:redis-server nginx:nginx wrk:wrk taskset:util-linux prlimit:util-linux prometheus:prometheus chromium:chromium

.PHONY: deps deps-build venv build build-release run redis-cluster test lint bench bench-compare bench-instructions bench-percore bench-allocs bench-allocs-run fuzz clean

deps-build:
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(BUILD_PACKAGES)" FONTS=no

deps:
	@missing=""; \
	for entry in $(APT_PACKAGES); do \
	  bin=$${entry%%:*}; pkg=$${entry##*:}; \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$pkg"; \
	done; \
	[ "$(FONTS)" = no ] || [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PYTHON): tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	@touch $(PYTHON)

venv: $(PYTHON)

# All targets, so the test run that follows reuses the same build (same feature set).
build: deps
	$(CARGO) build --workspace --all-targets

build-release: deps-build
	$(CARGO) build --release --bins

# Two mock-llm upstreams and sluice on config/gateway.yaml; the banner comes once sluice listens.
run: build-release
	@trap 'kill $$(jobs -p) 2>/dev/null' EXIT INT TERM; \
	./target/release/mock-llm --listen 127.0.0.1:8001 --name mock-a --token-delay-ms 20 & \
	./target/release/mock-llm --listen 127.0.0.1:8002 --name mock-b --token-delay-ms 20 & \
	./target/release/sluice run --config config/gateway.yaml & \
	sluice=$$!; \
	for _ in $$(seq 100); do \
	  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; \
	  kill -0 $$sluice 2>/dev/null || exit 1; \
	  sleep 0.1; \
	done; \
	echo ""; \
	echo "sluice on http://127.0.0.1:8080  (metrics: http://127.0.0.1:9090/metrics)"; \
	echo "status page: http://127.0.0.1:9090/"; \
	echo "try:  curl -s http://127.0.0.1:8080/v1/chat/completions -d '{\"model\":\"mock-gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"; \
	echo "      curl -sN http://127.0.0.1:8080/v1/chat/completions -d '{\"model\":\"mock-gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"; \
	echo ""; \
	wait $$sluice

# A local Redis Cluster (3 masters + 3 replicas on ports 7000-7005; FIRST_PORT=7100 moves
# them) to try shared limits and the cache on (docs/scaling.md); Ctrl-C stops it.
redis-cluster:
	@$(MAKE) --no-print-directory deps APT_PACKAGES="redis-server:redis-server" FONTS=no
	tools/redis-cluster.sh

test: build venv
	$(CARGO) test --workspace
	$(CARGO) test --manifest-path fuzz/Cargo.toml --lib --target-dir target

# Each fuzz target for FUZZ_SECONDS (nightly and cargo-fuzz, installed when missing); the corpus
# grows in fuzz/corpus/, findings land in fuzz/artifacts/ (add each as a regression case).
FUZZ_TARGETS := head_scan config_load exposition canonical_json request_target sse
FUZZ_SECONDS ?= 600
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t && \
	  $(CARGO) +nightly fuzz run $$t corpus/$$t regressions/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# Import cycles between files: none is allowed.
lint:
	python3 tools/import_cycles.py gateway/src plugins/src
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The load benchmark (sluice vs direct vs nginx, report in target/bench/), the per-core set
# (bench-percore), allocations per request, the per-core SSE streams, idle connections and
# soak (SOAK_SECONDS) runs, then the criterion micro-benchmarks; BENCH_QUICK=1 shortens them.
bench: deps
	$(CARGO) build --release --bins
	./target/release/loadbench
	./target/release/loadbench percore
	$(MAKE) --no-print-directory bench-allocs-run
	./target/release/loadbench streams
	./target/release/loadbench idle
	./target/release/loadbench soak
	if [ "$${BENCH_QUICK:-0}" = "1" ]; then \
	  $(CARGO) bench -p sluice-benches --bench hot_path -- --warm-up-time 0.3 --measurement-time 0.7; \
	else \
	  $(CARGO) bench -p sluice-benches --bench hot_path; \
	fi

# Two sluice builds against each other, per core (report in target/bench/compare.md):
# `make bench-compare OLD=path/to/old/sluice [NEW=...]`; BENCH_QUICK=1, BENCH_ROUNDS and
# BENCH_SECONDS shorten or lengthen it.
NEW ?= target/release/sluice
bench-compare: deps
	@[ -n "$(OLD)" ] || { echo "make bench-compare: set OLD to the old sluice binary"; exit 1; }
	$(CARGO) build --release --bin sluice --bin loadbench
	./target/release/loadbench compare "$(OLD)" "$(NEW)"

# Instructions per request under callgrind (repeatable where req/s is noisy), passthrough and
# cache hit, for each build in BINS (default: this tree's release build); target/bench/instructions.md.
BINS ?= target/release/sluice
bench-instructions: deps
	command -v valgrind >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null)
	$(CARGO) build --release --bin sluice --bin mock-llm
	benches/scripts/instructions.sh $(BINS)

# sluice, nginx (plain and proxy_cache) and stock Pingora each alone on CPU 0: req/s, latency,
# CPU-seconds per 1,000 requests (target/bench/percore.{md,json}); BENCH_QUICK=1 for 1 round of
# 2 s, PERCORE_ROUNDS and PERCORE_SECONDS to choose.
bench-percore: deps
	$(CARGO) build --release --bin sluice --bin stock-pingora --bin loadbench
	./target/release/loadbench percore

# Heap allocations per request, sluice in-process (passthrough and cache hit, with and without
# access lines); target/bench/allocs.md.
bench-allocs: deps
	$(CARGO) build --release --bin allocs
	$(MAKE) --no-print-directory bench-allocs-run

bench-allocs-run:
	rm -f target/bench/allocs.md
	for s in passthrough cache_hit; do \
	  ./target/release/allocs $$s && RUST_LOG=warn ./target/release/allocs $$s || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf $(VENV)
