#!/usr/bin/env bash
# The six-run matrices of the two recipes (seeds 0 1 2 x threads 1 2), for the spread that
# docs/application/results.md should quote instead of one run per seed (issue 24, items 4-5).
#
#     bash experiments/matrices.sh            # both, one run at a time
#     bash experiments/matrices.sh base       # only base.yaml
#     JOBS=2 bash experiments/matrices.sh     # the 1-thread runs two at a time (their train minutes are
#                                             # then upper bounds), the 2-thread runs one at a time
#     ISA="native avx2" bash experiments/matrices.sh   # also as an AVX2-only processor: twelve runs each
#
# Run from the repository root, alone on the machine if the training minutes are to be quoted.
# Each command is resumable: after Ctrl-C (or a reboot) the same command trains only the runs
# that have not finished; a finished run is never trained again. The tables land in
# runs/matrix-base/matrix.md and runs/matrix-assignment/matrix.md (and matrix.json); each
# run's console output in runs/matrix-*/runs/<name>.log. The exit status is non-zero if a
# run failed (its row says where its log is).
#
# How long (estimates from the runs in docs/application/results.md, 2 x86-64 cores):
# - base.yaml: 100 epochs; on the 2-core AMD EPYC with AVX-512, alone, 0.6 min of training per
#   run with 2 threads, 1.0 min with one, about 1.3 min per run from start to report. The six
#   runs one at a time: about 8 minutes (the first run also generates the data, seconds).
#   Never run a 2-thread run beside another job on 2 cores: OpenMP's threads wait for each
#   other and the run takes 5-10x longer (same numbers, though).
# - assignment.yaml: curriculum, then early stopping at the full length (patience 30); on the
#   2-core AMD EPYC with AVX-512 (session 7) 5.6-12.3 min of training per run with 2 threads
#   alone, 6.4-21.6 min with one thread two runs at a time. With JOBS=2 the 1-thread runs go
#   two at a time, then the 2-thread runs one at a time: 50 minutes in all.
set -euo pipefail

JOBS="${JOBS:-1}"
read -r -a ISAS <<< "${ISA:-native}"
which="${1:-all}"
status=0

# run_matrix CONFIG OUT: the 1-thread runs JOBS at a time, the 2-thread runs alone (OpenMP), then the
# whole table (every run finished by then: nothing is trained again)
run_matrix() {
    local config=$1 out=$2
    local args=(handlers.progress_bar=false --seeds 0 1 2 --isa "${ISAS[@]}" --out "$out")
    ignite-lstm matrix "$config" "${args[@]}" --threads 1 --jobs "$JOBS" || status=$?
    ignite-lstm matrix "$config" "${args[@]}" --threads 2 --jobs 1 || status=$?
    ignite-lstm matrix "$config" "${args[@]}" --threads 1 2 || status=$?
}

if [[ "$which" == all || "$which" == base ]]; then
    run_matrix configs/base.yaml runs/matrix-base
fi
if [[ "$which" == all || "$which" == assignment ]]; then
    run_matrix configs/assignment.yaml runs/matrix-assignment
fi
exit "$status"
