#!/usr/bin/env bash
# vramplan plan for axolotl: qwen2.5-7b (Qwen/Qwen2.5-7B-Instruct), 7,615,616,512 params, on RTX 4090 D (24,564 MiB as the driver reports it)
# estimated peak per GPU (backward_start): allocated 18.39 GiB (torch.cuda.max_memory_allocated), reserved 20.02 GiB (max_memory_reserved), device 20.52 GiB (nvidia-smi)
# headroom: 2.85 GiB of the 23.37 GiB torch can use
# setup: lora, bf16, adamw, seq 2048, micro-batch 1, grad-accum 16, gradient checkpointing, sdpa, LoRA r8 alpha 32 on all-linear
# why each memory-relevant setting:
#   adapter: lora  # lora: 20,185,088 trainable; full fine-tuning would need 82.64 GiB, does not fit
#   bf16: true  # bf16 weights under autocast; fp32 master weights (AMP) would need 36.10 GiB, does not fit
#   gradient_checkpointing: true  # saves 14.59 GiB at seq 2048 x micro-batch 1 (off: 35.10 GiB, does not fit)
#   micro_batch_size: 1  # one more sample per step adds 4.47 GiB (24.99 GiB, does not fit)
#   gradient_accumulation_steps: 16  # effective batch 16 without its activations; gradients are kept between micro-batches
#   sequence_len: 2048  # the estimate counts every sample at this length: shorter samples need less
#   optimizer: adamw_torch  # adamw: 8-bit AdamW would save 0.11 GiB
#   attn_implementation: sdpa  # sdpa: eager attention would peak about the same here
#   pad_to_sequence_len: true, sample_packing: false  # lengths fixed: pad_to_sequence_len: every batch at 2048 tokens a sample, the length counted
#   val_set_size: 0.0  # no evaluation during training (--evaluation none): no evaluate phase is counted
set -euo pipefail
axolotl train config.yml
