#!/usr/bin/env bash
# vramplan plan for trl: qwen2.5-7b (Qwen/Qwen2.5-7B-Instruct), 7,615,616,512 params, on RTX 4090 D (24,564 MiB as the driver reports it)
# estimated peak per GPU (backward): allocated 15.84 GiB (torch.cuda.max_memory_allocated), reserved 16.89 GiB (max_memory_reserved), device 17.39 GiB (nvidia-smi)
# headroom: 5.98 GiB of the 23.37 GiB torch can use
# setup: lora, bf16, adamw, seq 2048, micro-batch 1, grad-accum 16, gradient checkpointing, sdpa, LoRA r8 alpha 32 on all-linear
# why each memory-relevant setting:
#   METHOD = 'lora'; LORA r=8  # lora: 20,185,088 trainable; full fine-tuning would need 72.49 GiB, does not fit
#   DTYPE = 'bfloat16', bf16=True, fp16=False  # bf16 weights under autocast; fp32 master weights (AMP) would need 32.39 GiB, does not fit
#   gradient_checkpointing=True  # saves 14.01 GiB at seq 2048 x micro-batch 1 (off: 31.40 GiB, does not fit)
#   per_device_train_batch_size=1  # one more sample per step adds 1.35 GiB (18.74 GiB, fits)
#   gradient_accumulation_steps=16  # effective batch 16 without its activations; gradients are kept between micro-batches
#   max_length=2048  # the estimate counts every sample at this length: shorter samples need less
#   optim='adamw_torch'  # adamw: 8-bit AdamW would save 0.11 GiB
#   ATTN_IMPLEMENTATION = 'sdpa'  # sdpa: eager attention would add 1.06 GiB
#   packing=False, pad_to_multiple_of=2048  # lengths fixed: every batch padded to 2048 tokens a sample, the length the plan counts
#   eval_strategy='no'  # no evaluation during training (--evaluation none): no evaluate phase is counted
set -euo pipefail
python train.py --model Qwen/Qwen2.5-7B-Instruct --data self_cognition.jsonl "$@"
