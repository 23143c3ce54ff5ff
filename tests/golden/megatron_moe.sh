#!/usr/bin/env bash
# Megatron-LM core_v0.19.0: deepseek-v3 on 32 node(s) x 8 GPUs, tp=1 pp=8 vpp=1 cp=1 dp=32.
# Run from a Megatron-LM checkout on every node (multi-node: set NODE_RANK and MASTER_ADDR).
# Synthetic data with the model's exact vocabulary: for real training replace the NullTokenizer,
# --vocab-size and --mock-data flags with --data-path PREFIX --tokenizer-type HuggingFaceTokenizer
# --tokenizer-model NAME. Arguments to this script (--lr, --train-iters ...) are passed on.
set -euo pipefail
torchrun --nnodes 32 --nproc-per-node 8 \
  --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
  pretrain_gpt.py \
  --num-layers 61 \
  --hidden-size 7168 \
  --num-attention-heads 128 \
  --ffn-hidden-size 18432 \
  --seq-length 4096 \
  --max-position-embeddings 163840 \
  --position-embedding-type rope \
  --rotary-base 10000 \
  --normalization RMSNorm \
  --swiglu \
  --untie-embeddings-and-output-weights \
  --disable-bias-linear \
  --attention-dropout 0 \
  --hidden-dropout 0 \
  --use-flash-attn \
  --num-experts 256 \
  --moe-router-topk 8 \
  --moe-ffn-hidden-size 2048 \
  --moe-layer-freq '([0]*3+[1]*58)' \
  --moe-shared-expert-intermediate-size 2048 \
  --expert-model-parallel-size 32 \
  --expert-tensor-parallel-size 1 \
  --moe-grouped-gemm \
  --moe-token-dispatcher-type alltoall \
  --multi-latent-attention \
  --q-lora-rank 1536 \
  --kv-lora-rank 512 \
  --qk-head-dim 128 \
  --qk-pos-emb-head-dim 64 \
  --v-head-dim 128 \
  --tokenizer-type NullTokenizer \
  --vocab-size 129280 \
  --make-vocab-size-divisible-by 128 \
  --mock-data \
  --tensor-model-parallel-size 1 \
  --pipeline-model-parallel-size 8 \
  --decoder-first-pipeline-num-layers 6 \
  --decoder-last-pipeline-num-layers 7 \
  --context-parallel-size 1 \
  --micro-batch-size 1 \
  --global-batch-size 1024 \
  --use-distributed-optimizer \
  --recompute-granularity selective \
  --bf16 \
  --overlap-grad-reduce \
  --overlap-param-gather \
  "$@"
