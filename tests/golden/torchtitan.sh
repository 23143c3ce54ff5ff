#!/usr/bin/env bash
# torchtitan 0.3.0: llama3-8b (llama3_8b) on 4 node(s) x 8 GPUs, tp=2 pp=2 vpp=2 cp=2 dp=4.
# Run from a torchtitan checkout (its config's hf_assets_path and dataset) on every node
# (multi-node: set NODE_RANK and MASTER_ADDR). Arguments to this script are passed on.
set -euo pipefail
torchrun --nnodes 4 --nproc-per-node 8 \
  --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
  -m torchtitan.train \
  --module llama3 \
  --config llama3_8b \
  --training.local_batch_size 128 \
  --training.global_batch_size 512 \
  --training.seq_len 8192 \
  --training.mixed_precision_param bfloat16 \
  --parallelism.data_parallel_replicate_degree 2 \
  --parallelism.data_parallel_shard_degree 2 \
  --parallelism.fsdp_reshard_after_forward always \
  --parallelism.tensor_parallel_degree 2 \
  --parallelism.enable_sequence_parallel \
  --parallelism.context_parallel_degree 2 \
  --parallelism.pipeline_parallel_degree 2 \
  --parallelism.pipeline_parallel_schedule Interleaved1F1B \
  --parallelism.pipeline_parallel_microbatch_size 1 \
  --parallelism.pipeline_parallel_layers_per_stage 8 \
  --parallelism.pipeline_parallel_first_stage_less_layers 0 \
  --parallelism.pipeline_parallel_last_stage_less_layers 0 \
  --training.disable_cuda_graphs \
  --compile.enable \
  --compile.enable_async_tensor_parallel \
  "$@" \
  activation-checkpoint:selective
