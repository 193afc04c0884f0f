# Every target runs on the Node 22 that `npm ci` puts in node_modules/.bin
# (the machine's own node may be older).
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

SEEDS ?= 200
STEPS ?= 3000

.PHONY: all install system-deps demo demo-sim hosts chaos test typecheck sim sim-bugs bench-raft bench-extract bench-start bench bench-full clean

all: test

# Installs the locked dependencies once, and again whenever the lock changes.
install: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# The real container parts the agent and its tests use, from Debian (a fresh
# machine has none of them; no service starts by itself).
DEBIAN_PACKAGES := docker-registry skopeo umoci busybox-static attr zstd containerd runc iproute2 curl e2fsprogs
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p > /dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing > /dev/null; \
	fi

# The main job on an embedded default: a local registry, a local cluster of
# agents sharing one store, a pull on each agent, and a run of the image from
# the merged view of the shared layers.
demo: install system-deps
	tsx deploy/local/demo.ts

# HOSTS (default 3) hosts in network namespaces, each with an agent and a containerd, one
# shared directory, a registry behind a bandwidth limit; up until Ctrl-C.
RATE_MBIT ?= 100
hosts: install system-deps
	tsx deploy/local/cluster.ts --hosts $(or $(HOSTS),3) --rate-mbit $(RATE_MBIT)

# Rounds of cooperative pulls on HOSTS namespaced hosts under seeded faults
# (kills, partitions, registry and storage faults, membership changes).
ROUNDS ?= 10
SEED ?= 1
chaos: install system-deps
	tsx test/chaos/main.ts --rounds $(ROUNDS) --seed $(SEED) --hosts $(or $(HOSTS),5)

# The Raft core alone: a simulated cluster through crashes, partitions,
# membership changes and leadership transfers, narrated.
demo-sim: install
	tsx test/sim/main.ts --seed 1 --steps 3000 --narrate

typecheck: install
	tsc --noEmit -p tsconfig.json

# Type-checks, runs every test, and ends with the line "N passed, N failed".
test: install system-deps typecheck
	@bash test/run-tap.sh

sim: install
	tsx test/sim/main.ts --seeds $(SEEDS) --steps $(STEPS)

# Every injected bug must be caught.
sim-bugs: install
	@for b in $$(tsx test/sim/main.ts --list-bugs); do \
	  if tsx test/sim/main.ts --seeds $(SEEDS) --steps $(STEPS) --bug $$b --stop-on-failure > /dev/null; \
	  then echo "NOT DETECTED: $$b"; exit 1; else echo "detected: $$b"; fi; \
	done

# Raft throughput and latency beside a 3-member etcd 3.4 on loopback.
bench-raft: install
	@command -v etcd > /dev/null || (apt-get update -qq && apt-get install -y -qq etcd-server > /dev/null)
	tsx bench/raft.ts

# Extraction throughput beside GNU tar on the same 200+ MB Debian layer.
bench-extract: install system-deps
	tsx bench/extract.ts

# Container start (ctr run --rm of a present eight-layer image) with wharf's
# snapshotter beside containerd's own overlayfs, in the same containerd.
bench-start: install system-deps
	tsx bench/start.ts

# The Wharf paper's pull experiments (§6.1) on hosts in network namespaces:
# containerd pulling on each host, containerd with its root on the shared
# store, and wharf, in the same run. Writes bench/results/*.json,
# bench/plots/*.svg and bench/REPORT.md; the last line is JSON with the
# headline ratios. `bench` is a quick subset (under 10 minutes).
bench: install system-deps
	@test -x /usr/bin/time || (apt-get update -qq && apt-get install -y -qq time > /dev/null)
	tsx bench/paper.ts --quick

bench-full: install system-deps
	@test -x /usr/bin/time || (apt-get update -qq && apt-get install -y -qq time > /dev/null)
	tsx bench/paper.ts --full

clean:
	rm -rf dist .tap coverage
