# sourced by every session-4 job (see README.md here)
export PYTHONPATH=/tmp/site:/tmp/repo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/res; D=/tmp/bdata
# parse_run TABLE[/VARIANT] sets table, variant, vflags (the flags in $V_VARIANT; empty for a name that is not
# letters, digits and _) and name (results' stem, TABLE-VARIANT): used by start_base.sh and run_rec.sh
parse_run() {
  table=${1%%/*}; variant=${1#"$table"}; variant=${variant#/}; vflags=""; name=$table${variant:+-$variant}
  if [[ $variant =~ ^[A-Za-z0-9_]+$ ]]; then local vv="V_$variant"; vflags=${!vv-}; fi
}
mkdir -p $R $D
cd /tmp/repo
