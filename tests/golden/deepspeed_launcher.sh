#!/usr/bin/env bash
# Megatron-DeepSpeed with DeepSpeed 0.19: llama3-8b on 4 node(s) x 8 GPUs, tp=2 pp=1 dp=16 zero=3.
# Run from a Megatron-DeepSpeed checkout with DATA_PATH set to an indexed dataset prefix (multi-node:
# a hostfile with one 'HOST slots=N' line per node, and MASTER_ADDR). The NullTokenizer keeps the
# model's exact vocabulary; for real text use --tokenizer-type HFTokenizer --tokenizer-model NAME.
set -euo pipefail
deepspeed --num_nodes 4 --num_gpus 8 \
  --hostfile "${HOSTFILE:-hostfile}" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  pretrain_gpt.py \
  --num-layers 32 \
  --hidden-size 4096 \
  --num-attention-heads 32 \
  --ffn-hidden-size 14336 \
  --seq-length 8192 \
  --max-position-embeddings 8192 \
  --num-key-value-heads 8 \
  --use-rotary-position-embeddings \
  --rotary-position-embeddings-theta 500000 \
  --normalization rmsnorm \
  --swiglu \
  --untie-embeddings-and-output-weights \
  --disable-bias-linear \
  --attention-dropout 0 \
  --hidden-dropout 0 \
  --use-flash-attn-v2 \
  --tokenizer-type NullTokenizer \
  --vocab-size 128255 \
  --make-vocab-size-divisible-by 128 \
  --data-path "$DATA_PATH" \
  --tensor-model-parallel-size 2 \
  --pipeline-model-parallel-size 1 \
  --sequence-parallel \
  --micro-batch-size 2 \
  --global-batch-size 512 \
  --recompute-granularity full \
  --recompute-method uniform \
  --recompute-num-layers 1 \
  --fp16 \
  --no-pipeline-parallel \
  --deepspeed-activation-checkpointing \
  --partition-activations \
  --contigious-checkpointing \
  --zero-stage 3 \
  --deepspeed \
  --deepspeed_config ds_config.json \
  "$@"
