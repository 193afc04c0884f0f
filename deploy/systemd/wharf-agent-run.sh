#!/usr/bin/env bash
# Runs one wharf agent from the settings in its environment (systemd's
# EnvironmentFile=/etc/wharf/agent.env, or the Kubernetes ConfigMap of
# deploy/kubernetes), choosing how it starts from its data dir:
#
#   DATA/raft exists                  start              a member restarting: its log names its cluster
#   no DATA/raft, WHARF_JOIN set      join WHARF_JOIN    a new member (WHARF_BOOTSTRAP is then ignored)
#   DATA empty, WHARF_BOOTSTRAP=1     start --bootstrap  the founding agent, once per cluster
#   anything else                     refused, exit 2
#
# A join that never completed (stopped early, wrong secret) leaves DATA/raft
# behind; `start` then refuses it ("holds no cluster", exit 2): remove
# DATA/raft and start again.
#
# `wharf-agent-run.sh wait` returns once the snapshotter socket exists (at
# most WHARF_READY_TIMEOUT seconds, default 60): the unit's ExecStartPost, so
# that containerd, ordered after the unit, starts with its snapshotter up.
#
# Install path convention: the project in /opt/wharf (WHARF_HOME), installed
# there with `npm ci`, which puts Node 22 and tsx in node_modules/.bin; the
# agent is `node /opt/wharf/node_modules/.bin/tsx /opt/wharf/src/cli/wharf-agent.ts`.
#
# Environment: WHARF_DATA, WHARF_SHARED, WHARF_LISTEN, WHARF_SECRET_FILE
# (required); WHARF_JOIN, WHARF_BOOTSTRAP, WHARF_EXTRA_FLAGS (split on
# blanks, no quoting), WHARF_SNAPSHOTTER_SOCKET (default
# /run/wharf/snapshotter.sock: containerd's proxy_plugins.wharf address),
# WHARF_HOME, WHARF_LOG_LEVEL (read by the agent). See agent.env.example.

set -euo pipefail

die() {
  echo "wharf-agent-run: $*" >&2
  exit 2
}

home=${WHARF_HOME:-/opt/wharf}
socket=${WHARF_SNAPSHOTTER_SOCKET:-/run/wharf/snapshotter.sock}

if [[ ${1:-} == wait ]]; then
  timeout=${WHARF_READY_TIMEOUT:-60}
  [[ $timeout =~ ^[0-9]+$ ]] || die "WHARF_READY_TIMEOUT takes whole seconds, not '$timeout'"
  for ((i = 0; i < timeout * 10; i++)); do
    [[ -S $socket ]] && exit 0
    # systemd gives control processes the main PID: stop waiting for an agent that is gone.
    if [[ -n ${MAINPID:-} ]] && ! kill -0 "$MAINPID" 2> /dev/null; then
      echo "wharf-agent-run: the agent exited before serving $socket" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "wharf-agent-run: no snapshotter socket at $socket after ${timeout}s" >&2
  exit 1
fi
[[ $# -eq 0 ]] || die "usage: wharf-agent-run.sh [wait]"

for v in WHARF_DATA WHARF_SHARED WHARF_LISTEN WHARF_SECRET_FILE; do
  [[ -n ${!v:-} ]] || die "$v is not set (see /etc/wharf/agent.env)"
done
data=$WHARF_DATA
shared=$WHARF_SHARED
# The agent would create a missing shared dir on the local disk, where no
# other host sees it: require it, as a sign the shared file system is mounted.
[[ -d $shared ]] || die "the shared store $shared does not exist (is the shared file system mounted?)"
[[ -r $WHARF_SECRET_FILE ]] || die "cannot read the secret file $WHARF_SECRET_FILE"

node=$home/node_modules/.bin/node
[[ -x $node ]] || node=node
tsx=$home/node_modules/.bin/tsx
cli=$home/src/cli/wharf-agent.ts
[[ -e $tsx && -f $cli ]] || die "no wharf installation in $home (expected $tsx and $cli)"

extra=()
read -r -a extra <<< "${WHARF_EXTRA_FLAGS:-}"

flags=(--data "$data" --shared "$shared" --listen "$WHARF_LISTEN"
  --secret-file "$WHARF_SECRET_FILE" --snapshotter-socket "$socket"
  ${extra[@]+"${extra[@]}"})

# The agent's Node flags (AGENT_NODE_FLAGS in src/cli/node-flags.ts says
# why), through NODE_OPTIONS: tsx runs the agent in a child process.
export NODE_OPTIONS="--max-semi-space-size=32${NODE_OPTIONS:+ $NODE_OPTIONS}"

if [[ -d $data/raft ]]; then
  exec "$node" "$tsx" "$cli" start "${flags[@]}"
fi
if [[ -n ${WHARF_JOIN:-} ]]; then
  exec "$node" "$tsx" "$cli" join "$WHARF_JOIN" "${flags[@]}"
fi
if [[ ${WHARF_BOOTSTRAP:-} == 1 ]]; then
  if [[ -d $data && -n $(find "$data" -mindepth 1 -maxdepth 1 -print -quit) ]]; then
    die "WHARF_BOOTSTRAP=1 but $data is not empty and holds no raft/: refusing to found a cluster there"
  fi
  exec "$node" "$tsx" "$cli" start --bootstrap "${flags[@]}"
fi
die "$data holds no cluster: set WHARF_JOIN to a member's multiaddr to join one, or WHARF_BOOTSTRAP=1 on the one host that founds it"
