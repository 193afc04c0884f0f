# Every target runs on the Node 22 that `npm ci` puts in node_modules/.bin
# (the machine's own node may be older).
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

SEEDS ?= 200
STEPS ?= 3000

.PHONY: all install demo test typecheck sim sim-bugs bench-raft clean

all: test

# Installs the locked dependencies once, and again whenever the lock changes.
install: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# The main job. For now: a simulated cluster of Raft cores through crashes,
# partitions, membership changes and leadership transfers, narrated.
demo: install
	tsx test/sim/main.ts --seed 1 --steps 3000 --narrate

typecheck: install
	tsc --noEmit -p tsconfig.json

# Type-checks, runs every test, and ends with the line "N passed, N failed".
test: install typecheck
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

clean:
	rm -rf dist .tap coverage
