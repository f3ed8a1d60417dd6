#!/usr/bin/env bash
# The six-run matrices of the two recipes (seeds 0 1 2 x threads 1 2), for the spread that
# docs/application/results.md should quote instead of one run per seed (issue 24, items 4-5).
#
#     bash experiments/matrices.sh            # both, one run at a time
#     bash experiments/matrices.sh base       # only base.yaml
#     JOBS=2 bash experiments/matrices.sh     # two runs at a time (their train minutes are then upper bounds)
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
# - assignment.yaml: curriculum with early stopping, 500-1050 epochs; 8-33 min of training
#   per run with 1 thread (22.6 min for seed 1 alone), 2 threads somewhat less. The six runs
#   one at a time: about 1.5-3 hours. JOBS=2 on two cores saves little wall time (the runs
#   then share the cores) and makes the minutes upper bounds.
set -euo pipefail

JOBS="${JOBS:-1}"
read -r -a ISAS <<< "${ISA:-native}"
which="${1:-all}"
status=0

if [[ "$which" == all || "$which" == base ]]; then
    ignite-lstm matrix configs/base.yaml handlers.progress_bar=false \
        --seeds 0 1 2 --threads 1 2 --isa "${ISAS[@]}" --jobs "$JOBS" --out runs/matrix-base || status=$?
fi
if [[ "$which" == all || "$which" == assignment ]]; then
    ignite-lstm matrix configs/assignment.yaml handlers.progress_bar=false \
        --seeds 0 1 2 --threads 1 2 --isa "${ISAS[@]}" --jobs "$JOBS" --out runs/matrix-assignment || status=$?
fi
exit "$status"
