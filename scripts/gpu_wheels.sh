#!/usr/bin/env bash
# The wheels a GPU machine without network needs beside its image (Python 3.12, torch 2.11+cu130, transformers,
# accelerate, peft): about 10 MB, built where the package index is reachable. Usage: bash scripts/gpu_wheels.sh DEST
set -euo pipefail
dest=${1:-.whl}; mkdir -p "$dest"; tmp=$(mktemp -d)
plat="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64"
get() { python3 -m pip download -q --no-deps --only-binary=:all: "$@"; }
get $plat -d "$tmp" bitsandbytes==0.50.2 pydantic-core==2.50.5 multiprocess==0.70.19
get -d "$dest" trl==1.16.0 peft==0.21.2 datasets==5.2.0 liger-kernel==0.8.5 pydantic==2.14.4 dill==0.4.1 \
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
mv "$tmp"/pydantic_core-*.whl "$tmp"/multiprocess-*.whl "$dest"/
# bitsandbytes ships 16 native libraries (43 MB); torch 2.11+cu130 loads only libbitsandbytes_cuda130.so
# (SASS for sm_75..sm_120, sm_90 included). Keep that one and the CPU one, and drop the rest from RECORD too.
export OUTWHL="$(realpath "$dest")/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
mkdir "$tmp/bnb" && (cd "$tmp/bnb" && unzip -q ../bitsandbytes-0.50.2-*.whl \
  && find bitsandbytes -name '*.so' ! -name libbitsandbytes_cuda130.so ! -name libbitsandbytes_cpu.so -delete \
  && python3 - <<'PY'
import csv, glob, os, zipfile
rec = glob.glob("*.dist-info/RECORD")[0]
rows = [r for r in csv.reader(open(rec)) if not r[0].endswith(".so") or os.path.exists(r[0])]
with open(rec, "w", newline="") as fh:
    csv.writer(fh, lineterminator="\n").writerows(rows)
with zipfile.ZipFile(os.environ["OUTWHL"], "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for root, _, files in os.walk("."):
        for f in sorted(files):
            p = os.path.join(root, f)[2:]
            z.write(p, p)
PY
) 
rm -rf "$tmp"; ls -l "$dest"; du -cb "$dest"/*.whl | tail -1
