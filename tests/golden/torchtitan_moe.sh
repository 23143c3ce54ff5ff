#!/usr/bin/env bash
# torchtitan 0.3.0: deepseek-v3 (deepseek_v3_671b) on 32 node(s) x 8 GPUs, tp=1 pp=8 vpp=1 cp=1 dp=32.
# Run from a torchtitan checkout (its config's hf_assets_path and dataset) on every node
# (multi-node: set NODE_RANK and MASTER_ADDR). Arguments to this script are passed on.
set -euo pipefail
torchrun --nnodes 32 --nproc-per-node 8 \
  --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
  -m torchtitan.train \
  --module deepseek_v3 \
  --config deepseek_v3_671b \
  --training.local_batch_size 32 \
  --training.global_batch_size 1024 \
  --training.seq_len 4096 \
  --training.mixed_precision_param bfloat16 \
  --parallelism.data_parallel_replicate_degree 1 \
  --parallelism.data_parallel_shard_degree 32 \
  --parallelism.fsdp_reshard_after_forward always \
  --parallelism.tensor_parallel_degree 1 \
  --parallelism.no-enable-sequence-parallel \
  --parallelism.context_parallel_degree 1 \
  --parallelism.pipeline_parallel_degree 8 \
  --parallelism.expert_parallel_degree 32 \
  --parallelism.pipeline_parallel_schedule 1F1B \
  --parallelism.pipeline_parallel_microbatch_size 1 \
  --parallelism.pipeline_parallel_layers_per_stage 8 \
  --parallelism.pipeline_parallel_first_stage_less_layers 2 \
  --parallelism.pipeline_parallel_last_stage_less_layers 1 \
  --training.disable_cuda_graphs \
  --compile.no-enable \
  --compile.no-enable-async-tensor-parallel \
  "$@" \
  activation-checkpoint:none
