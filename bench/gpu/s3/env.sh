# sourced by every job of the session-3 Beauty run (see ../README.md and this folder's README)
export PYTHONPATH=/tmp/site:/tmp/repo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/tmp/res; D=/tmp/bdata
mkdir -p $R $D
cd /tmp/repo
