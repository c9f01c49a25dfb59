#!/usr/bin/env bash
# One device call of the zoo from scratch (issue 25): carry a pack folder into /tmp/bcgpu/pack,
# then train each ARCH:EPOCHS:LR:SECONDS in turn, each into $OUT/<arch> (what comes back) and
# its own work folder. The first call also installs the wheels and prints the environment.
# Usage (on the device): bash scripts/gpu/zoo_call.sh CALL_FOLDER [ARCH:EPOCHS:LR:SECONDS ...]
set -euo pipefail
P=/tmp/bcgpu
mkdir -p "$P/pack"
cp -r "$1"/. "$P/pack/"
shift
export PYTHONPATH=$P/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1
if [ ! -d "$P/site/keras" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$P/site" "$P"/pack/wheels/*.whl
  python3 scripts/gpu/train_lab.py --pack "$P/pack" --check-env
fi
for spec in "$@"; do
  IFS=: read -r arch epochs lr seconds <<< "$spec"
  python3 scripts/gpu/train_lab.py --pack "$P/pack" --arch "$arch" --work "$P/work-$arch" \
    --out "$OUT/$arch" --epochs "$epochs" --lr "$lr" --batch-size 64 --warmup-steps 200 \
    --keep best --max-seconds "$seconds" || echo "zoo_call: $arch failed; going on" >&2
done
