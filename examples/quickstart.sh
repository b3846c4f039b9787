#!/usr/bin/env bash
# ssmd in one command: install the build dependencies (Debian 12), build, start
# the daemon on the bundled demo model (models/demo, CPU backend) with a fresh
# state library, and show that a session snapshotted before a daemon restart
# resumes exactly where it stopped.
#
#   examples/quickstart.sh            # builds into build/
#   SSMD_BUILD=DIR examples/quickstart.sh
#   SSMD_MODEL=DIR                    # another Hugging Face Mamba model folder
#                                     # (default: models/demo)
#
# The demo model is small (11 M parameters, see models/demo/MODEL.md): it
# writes the form of its training text with little sense, but every step below
# is the real thing — the resumed continuation must equal the uninterrupted one.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
build=${SSMD_BUILD:-build}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "dependencies"
pkgs="build-essential meson ninja-build pkg-config libnng-dev liblz4-dev libsqlite3-dev
libprotobuf-c-dev protobuf-c-compiler libxxhash-dev libcjson-dev libutf8proc-dev"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" -eq 0 ]; then
		apt-get update -q && apt-get install -y -q --no-install-recommends $missing
	else
		echo "missing Debian packages:$missing"
		echo "install them with: sudo apt-get install$missing"
		exit 1
	fi
fi
echo "all present"

step "build ($build)"
[ -d "$build" ] || meson setup "$build" >/dev/null
ninja -C "$build" >/dev/null
ssmd=$build/daemon/ssmd
ssmctl=$build/client/ssmctl
for bin in "$ssmd" "$ssmctl"; do
	[ -x "$bin" ] || { echo "not built: $bin"; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ssmd-quickstart.XXXXXX")
daemon_pid=""
cleanup() {
	[ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
	[ -z "$daemon_pid" ] || wait "$daemon_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

step "model"
model=${SSMD_MODEL:-$root/models/demo}
[ -f "$model/config.json" ] || { echo "no model at $model (set SSMD_MODEL)"; exit 1; }
ls -l "$model"

# The daemon's sockets go in its run directory: ssmd.sock for requests and
# ssmd-events.sock for token streams, which ssmctl derives from $SSMD_URL.
export SSMD_URL="ipc://$work/ssmd.sock"
start_daemon() {
	"$ssmd" --model "$model" --store "$work/states.db" --run-dir "$work" \
		--backend cpu --log-level warn &
	daemon_pid=$!
	for _ in $(seq 100); do
		"$ssmctl" info >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "ssmd did not start"; exit 1
}
stop_daemon() {
	kill -TERM "$daemon_pid" && wait "$daemon_pid" || true
	daemon_pid=""
}
run() { printf '$ %s\n' "$*"; "$@"; }

step "start ssmd on a fresh state library"
start_daemon
run "$ssmctl" info

step "a session: append text, snapshot it, then generate"
S=$("$ssmctl" open)
echo "session $S"
run "$ssmctl" append "$S" --text "The cp command copies files and directories. To copy a whole directory,"
ID=$("$ssmctl" snapshot "$S" --tag quickstart/demo --label "after the prompt")
echo "state $ID"
# Seeded sampling: the sampler's random numbers are keyed by (seed, token
# index), so a resumed session draws exactly the same ones.
gen="--max-tokens 40 --temperature 0.8 --top-p 0.95 --seed 11"
printf '$ %s generate %s %s\n' "$ssmctl" "$S" "$gen"
first=$("$ssmctl" generate "$S" $gen)
echo "$first"

step "stop the daemon, start it again"
stop_daemon
start_daemon
run "$ssmctl" states
run "$ssmctl" state quickstart/demo

step "resume from the state ID and generate again"
R=$("$ssmctl" open --from "$ID")
echo "session $R (resumed from $ID)"
printf '$ %s generate %s %s\n' "$ssmctl" "$R" "$gen"
second=$("$ssmctl" generate "$R" $gen)
echo "$second"

step "score: the log-probability of a text after the snapshot, state unchanged"
run "$ssmctl" score "$ID" --text " use the -r option."
run "$ssmctl" score "$ID" --text " option the use -r."

step "result"
if [ "$first" = "$second" ]; then
	echo "identical: the resumed session continued exactly as before the restart"
else
	echo "DIFFERENT continuations after resume"; exit 1
fi
run "$ssmctl" stats
stop_daemon
