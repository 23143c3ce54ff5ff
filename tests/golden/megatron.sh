#!/usr/bin/env bash
# Megatron-LM core_v0.19.0: llama3-8b on 4 node(s) x 8 GPUs, tp=4 pp=2 vpp=2 cp=1 dp=4.
# Run from a Megatron-LM checkout on every node (multi-node: set NODE_RANK and MASTER_ADDR).
# Synthetic data with the model's exact vocabulary: for real training replace the NullTokenizer,
# --vocab-size and --mock-data flags with --data-path PREFIX --tokenizer-type HuggingFaceTokenizer
# --tokenizer-model NAME. Arguments to this script (--lr, --train-iters ...) are passed on.
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1
torchrun --nnodes 4 --nproc-per-node 8 \
  --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
  pretrain_gpt.py \
  --num-layers 32 \
  --hidden-size 4096 \
  --num-attention-heads 32 \
  --ffn-hidden-size 14336 \
  --seq-length 8192 \
  --max-position-embeddings 8192 \
  --position-embedding-type rope \
  --rotary-base 500000 \
  --normalization RMSNorm \
  --group-query-attention \
  --num-query-groups 8 \
  --swiglu \
  --untie-embeddings-and-output-weights \
  --disable-bias-linear \
  --attention-dropout 0 \
  --hidden-dropout 0 \
  --use-flash-attn \
  --tokenizer-type NullTokenizer \
  --vocab-size 128256 \
  --make-vocab-size-divisible-by 64 \
  --mock-data \
  --tensor-model-parallel-size 4 \
  --pipeline-model-parallel-size 2 \
  --sequence-parallel \
  --num-layers-per-virtual-pipeline-stage 8 \
  --context-parallel-size 1 \
  --micro-batch-size 1 \
  --global-batch-size 512 \
  --use-distributed-optimizer \
  --num-distributed-optimizer-instances 2 \
  --recompute-granularity full \
  --recompute-method block \
  --recompute-num-layers 1 \
  --bf16 \
  --fp8-format hybrid \
  --overlap-grad-reduce \
  --overlap-param-gather \
  --tp-comm-overlap \
  "$@"
