# shellcheck shell=bash
# Sourced by the lent-GPU scripts (session.sh, samplers.sh) from the repo root on the device machine.
# Its image has python 3.12, torch and most of the numeric stack, but not monai, deepspeed,
# webdataset and the readers: `make wheels` here puts them in .whl/, the device call carries
# .whl (carry: [".whl"]) and this installs them into /tmp/site. Sets PY and prints the versions.
# DEVICE=cpu (a dry run on a CPU machine) skips the wheels and the GPU query.
DEVICE=${DEVICE:-cuda}
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
PY=${PY:-python3}
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; fi
$PY -c "import torch, monai, deepspeed, webdataset, numpy; print('torch', torch.__version__, 'monai', monai.__version__, 'deepspeed', deepspeed.__version__, 'webdataset', webdataset.__version__, 'numpy', numpy.__version__)" || exit 1
