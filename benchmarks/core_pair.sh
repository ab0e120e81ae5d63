#!/bin/bash
# Runs a command on two cores of this machine, two threads in all, as on the 2-core CPUs medsr is
# measured on: the first two logical CPUs that sit on different physical cores (no hyperthread
# siblings), so a bigger machine (a 16-core server, say) can give "this class of 2-core CPU" figures.
#
#     bash benchmarks/core_pair.sh python benchmarks/make_performance.py --quick --out FILE
set -euo pipefail
cpus=$(lscpu -p=CPU,CORE,SOCKET | grep -v '^#' | sort -t, -k3,3n -k2,2n -k1,1n | awk -F, '!seen[$3","$2]++ {print $1}' | head -2 | paste -sd,)
[ "$(tr -cd , <<<"$cpus")" = "," ] || { echo "core_pair.sh: found no two physical cores (lscpu -p: $cpus)" >&2; exit 1; }
echo "core_pair.sh: logical CPUs $cpus" >&2
OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 exec taskset -c "$cpus" "$@"
