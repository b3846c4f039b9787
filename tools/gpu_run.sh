#!/usr/bin/env bash
# gpu_run.sh — runs the CUDA backend's conformance tests, sanitizers and
# benchmarks on a GPU machine that has the CUDA driver, python3 with torch and
# transformers, but no build tools or -dev packages of its own.
#
# Two halves:
#   tools/gpu_run.sh stage [BUILD]   (on the build machine) copies the test and
#       bench binaries, ssm-mkmodel, the shared libraries they load
#       (../shared/gpu/carry-libs.sh), the tiny-mamba fixture and
#       bench/hf_bench.py into .gpu/ (git-ignored), to be carried along.
#   tools/gpu_run.sh [test] [profile] [sanitize|memcheck|racecheck] [bench] [decode]
#       [prefill] [hf]
#       (on the GPU machine) runs the chosen parts (test, sanitize, bench and
#       hf when none is named; profile: Nsight Compute's counters (time,
#       instructions, issue slots busy, occupancy, DRAM) for each kernel of one
#       layer of a 1.4b 2k prefill, where ncu exists; decode:
#       only bench_cuda's decode rows and splits, once per word of
#       $DECODE_VARIANTS (default: "default"; a word VAR=VALUE runs with that
#       environment variable set, VAR=VALUE,VAR2=VALUE2 with both, to compare
#       settings); prefill: the same
#       for the prefill rows and $PREFILL_VARIANTS; the sanitizers
#       last, on the test's quick mode, since they are the slowest: both
#       tools run over the test's groups, all side by side, SANITIZE_TIMEOUT
#       seconds each, default 240; SANITIZE_GROUPS picks groups), writes every
#       log to $OUT (or ./gpu-out) and prints the results table last.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = stage ]; then
	build=${2:-build-gpu}
	rm -rf .gpu && mkdir -p .gpu/bin .gpu/lib .gpu/fix
	for f in tests/cuda/test_cuda bench/bench_cuda bench/bench_service kernels/ssm-mkmodel; do
		[ -f "$build/$f" ] && cp "$build/$f" .gpu/bin/
	done
	strip .gpu/bin/*
	../shared/gpu/carry-libs.sh .gpu/bin/* .gpu/lib >/dev/null
	cp -r tests/fixtures/reference/tiny-mamba .gpu/fix/
	# the daemon as the textbook walkthrough finds it in a build folder
	mkdir -p .gpu/build/daemon .gpu/build/client
	for f in daemon/ssmd daemon/ssm-tokenize; do
		[ -f "$build/$f" ] && cp "$build/$f" .gpu/build/daemon/
	done
	strip .gpu/build/daemon/*
	cp "$build/client/ssmd_pb2.py" .gpu/build/client/ 2>/dev/null || true
	../shared/gpu/carry-libs.sh .gpu/build/daemon/* .gpu/lib >/dev/null
	book=/usr/share/debian-reference/debian-reference.en.txt.gz
	[ -f "$book" ] && cp "$book" .gpu/
	du -sh .gpu
	exit 0
fi

out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
parts="$*"
[ -n "$parts" ] || parts="test sanitize bench hf"
want() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SSMD_SHARED_FIXTURES=$PWD/.gpu/fix
export SSMD_TEST_FIXTURES=$PWD/tests/fixtures
bin=$PWD/.gpu/bin
models=/tmp/ssmd-models

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used \
	--format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

# Random-weight models of the real shapes (bf16 on disk, vocab 50280).
mkmodel() { # name d_model n_layer
	[ -f "$models/$1/config.json" ] && return 0
	"$bin/ssm-mkmodel" --out "$models/$1" --d-model "$2" --n-layer "$3" \
		--vocab 50280 --dtype bf16 --seed 1 >/dev/null
}
mkdir -p "$models"
t0=$(date +%s)
mkmodel m130 768 24
echo "m130 ready in $(( $(date +%s) - t0 )) s"
# the big ones are written in the background while the tests run
big_pids=""
if want bench || want profile || want decode || want prefill; then
	mkmodel m1.4b 2048 48 & big_pids="$big_pids $!"
	mkmodel m2.8b 2560 64 & big_pids="$big_pids $!"
fi

summary=""
if want test; then
	SSMD_CUDA_BIG_MODEL=$models/m130 "$bin/test_cuda" >"$out/test.log" 2>&1
	echo "test_cuda exit $?" >>"$out/test.log"
	summary="$summary$(grep -E '^cuda: [0-9]+ passed' "$out/test.log")
"
	# the big group again on small models of dt_rank 64 (the most the
	# scan's own dt_proj takes; the 130m shape's is 48) and 128 (1.4b's,
	# where dt_proj is a GEMM of its own), and of d_model 50 (d_inner 100:
	# the prefill's 16-bit tiles copy value by value where 16-byte copies
	# do not divide a row, and no persistent kernel takes the widths), and
	# of d_model 2560 (2.8b's widths: the conv + x_proj kernel's 320
	# channels a block, past the first round of its conv phase at 8 and at
	# 16 rows a cluster, which the 130m shape's 96 never reach), and of
	# dt_rank 464 (past the 448 whose tensor-core SSM step fits the 48 KB
	# of shared memory a launch gets: the lanes' step takes it)
	for r in 64 128 d50 d2560 464; do
		case $r in
		d50) shape="--d-model 50" what="d_model 50" ;;
		d2560) shape="--d-model 2560" what="d_model 2560" ;;
		*) shape="--d-model 256 --dt-rank $r" what="dt_rank $r" ;;
		esac
		"$bin/ssm-mkmodel" --out "$models/r$r" $shape --n-layer 2 \
			--vocab 512 --dtype bf16 --seed 2 >/dev/null
		SSMD_CUDA_ONLY=big SSMD_CUDA_BIG_MODEL=$models/r$r "$bin/test_cuda" \
			>"$out/test-r$r.log" 2>&1
		echo "test_cuda exit $?" >>"$out/test-r$r.log"
		summary="$summary($what) $(grep -E '^cuda: [0-9]+ passed' "$out/test-r$r.log")
"
	done
	cat "$out/test.log"
fi
if want profile; then
	for p in $big_pids; do wait "$p"; done
	big_pids=""
	ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
	if [ -n "$ncu" ]; then
		# Nsight Compute over one layer of the 1.4b 2k prefill's warm-up
		# run, every kernel (GEMMs included): the run starts with the
		# embedding and has PROFILE_PER_LAYER kernels a layer, so the
		# default window is layer 8. PROFILE_SKIP / PROFILE_COUNT move it.
		per=${PROFILE_PER_LAYER:-11}
		BENCH_CUDA_PROFILE=1 BENCH_CUDA_PREFILL_ONLY=1 timeout 300 "$ncu" --csv \
			--page raw --launch-skip "${PROFILE_SKIP:-$((1 + 8 * per))}" \
			--launch-count "${PROFILE_COUNT:-$per}" --metrics \
gpu__time_duration.sum,sm__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,\
sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,\
launch__registers_per_thread,launch__grid_size \
			"$bin/bench_cuda" "1.4b=$models/m1.4b" >"$out/ncu.csv" 2>"$out/ncu.err"
		echo "ncu exit $?" >>"$out/ncu.err"
		# one row a kernel: name, then the metrics in the order asked
		python3 - "$out/ncu.csv" <<'PY' | tee "$out/ncu.txt"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if len(rows) < 3:
    sys.exit("ncu: no kernel rows")
head, units, data = rows[0], rows[1], rows[2:]
cols = ["gpu__time_duration.sum", "sm__inst_executed.sum",
        "smsp__issue_active.avg.pct_of_peak_sustained_active",
        "sm__warps_active.avg.pct_of_peak_sustained_active",
        "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        "launch__registers_per_thread", "launch__grid_size"]
idx = [head.index(c) for c in cols]
name = head.index("Kernel Name")
print("| kernel | time (%s) | instructions | issue busy %% | warps active %% | DRAM %% | regs | grid |"
      % units[idx[0]])
print("|---|---|---|---|---|---|---|---|")
for r in data:
    print("| %s | %s |" % (r[name].split("(")[0][:60], " | ".join(r[i] for i in idx)))
PY
	else
		echo "profile: no ncu on this machine"
	fi
fi
if want bench; then
	for p in $big_pids; do wait "$p"; done
	echo "all models ready after $(( $(date +%s) - t0 )) s"
	"$bin/bench_cuda" "130m=$models/m130" "1.4b=$models/m1.4b" \
		"2.8b=$models/m2.8b" >"$out/bench.txt" 2>"$out/bench.err"
	echo "bench_cuda exit $?" >>"$out/bench.err"
	cat "$out/bench.err"
fi
# bench_cuda's decode (or prefill) rows alone, once per word of
# $DECODE_VARIANTS (or $PREFILL_VARIANTS)
variants() { # decode|prefill ONLY_VARIABLE words...
	local kind=$1 only=$2 v sel f
	shift 2
	for p in $big_pids; do wait "$p"; done
	big_pids=""
	echo "all models ready after $(( $(date +%s) - t0 )) s"
	for v in "$@"; do
		sel=""
		[ "$v" = default ] || sel=$v
		f=$out/$kind-${v//[=,]/-} # the log's name: no '=' or ','
		env $only=1 ${sel//,/ } timeout 150 "$bin/bench_cuda" \
			"130m=$models/m130" "1.4b=$models/m1.4b" "2.8b=$models/m2.8b" \
			>"$f.txt" 2>"$f.err"
		echo "bench_cuda $kind ($v) exit $?" >>"$f.err"
		tail -n 1 "$f.err"
	done
}
want decode && variants decode BENCH_CUDA_DECODE_ONLY ${DECODE_VARIANTS:-default}
want prefill && variants prefill BENCH_CUDA_PREFILL_ONLY ${PREFILL_VARIANTS:-default}
if want hf; then
	PYTHONUNBUFFERED=1 timeout 240 python3 bench/hf_bench.py >"$out/hf.txt" \
		2>"$out/hf.err"
	echo "hf_bench exit $?" >>"$out/hf.err"
	tail -n 5 "$out/hf.err"
fi
if want service; then
	# paging a 1.4b-shaped session through the host tier and the library
	"$bin/bench_service" --backend cuda --shape 1.4b --mkmodel "$bin/ssm-mkmodel" \
		--dir /tmp --slots 4 --sessions 40 --rounds 3 --tokens 4 --reps 20 \
		--host-cache-mb 4096 >"$out/service.txt" 2>"$out/service.err"
	echo "bench_service exit $?" >>"$out/service.err"
	tail -n 2 "$out/service.err"
fi
if want textbook; then
	if [ -d .whl ]; then
		python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
			--upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
	fi
	PYTHONUNBUFFERED=1 timeout 300 python3 examples/textbook/walkthrough.py \
		--build .gpu/build --backend cuda --book .gpu/debian-reference.en.txt.gz \
		--json "$out/textbook.json" >"$out/textbook.txt" 2>"$out/textbook.err"
	echo "walkthrough exit $?" >>"$out/textbook.err"
	tail -n 3 "$out/textbook.err"
fi
if want sanitize || want memcheck || want racecheck; then
	# racecheck looks at shared memory only: restrict it to this project's
	# kernels (names ssmk_*). It fails internally ("failed to handle a
	# hardware exception") once cuBLAS's Hopper bf16 GEMMs run, even
	# uninstrumented, so its run keeps all weights in f32.
	# Both tools over the test's groups, every run side by side.
	pids=""
	for tool in memcheck racecheck; do
		want sanitize || want $tool || continue
		opts=""
		envs="SSMD_CUDA_QUICK=1"
		if [ $tool = racecheck ]; then
			opts="--kernel-name kns=ssmk_"
			envs="$envs SSMD_CUDA_F32_ONLY=1"
		fi
		# ("big" needs SSMD_CUDA_BIG_MODEL, which the sanitizer runs leave
		# unset; racecheck takes the batch group case by case)
		groups="fixtures cross batch checkpoints xproj-big groups sampling"
		[ $tool = racecheck ] && groups="fixtures cross batch-f32-64 batch-f32-37 \
			batch-low-64 batch-f32-3 batch-low-20 batch-low-2 checkpoints xproj-big groups \
			sampling"
		for g in ${SANITIZE_GROUPS:-$groups}; do
			env $envs SSMD_CUDA_ONLY=$g timeout ${SANITIZE_TIMEOUT:-240} \
				compute-sanitizer --tool $tool $opts --error-exitcode 9 \
				"$bin/test_cuda" >"$out/sanitize-$tool-$g.log" 2>&1 &
			pids="$pids $!:$tool-$g"
		done
	done
	for pg in $pids; do
		wait "${pg%%:*}"
		rc=$?
		tg=${pg#*:}
		summary="$summary$tg: exit $rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^cuda:' \
			"$out/sanitize-$tg.log" | tr '\n' ' ')
"
	done
fi
echo "================================================================"
printf '%s' "$summary"
[ -f "$out/bench.txt" ] && cat "$out/bench.txt"
for v in ${DECODE_VARIANTS:-default}; do
	[ -f "$out/decode-${v//[=,]/-}.txt" ] && { echo "decode, $v:"; cat "$out/decode-${v//[=,]/-}.txt"; }
done
for v in ${PREFILL_VARIANTS:-default}; do
	[ -f "$out/prefill-${v//[=,]/-}.txt" ] && { echo "prefill, $v:"; cat "$out/prefill-${v//[=,]/-}.txt"; }
done
[ -f "$out/hf.txt" ] && cat "$out/hf.txt"
[ -f "$out/service.txt" ] && cat "$out/service.txt"
[ -f "$out/textbook.txt" ] && tail -n 14 "$out/textbook.txt"
exit 0
