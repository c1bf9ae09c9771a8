#!/usr/bin/env bash
# vramplan plan for llamafactory: qwen2.5-7b (Qwen/Qwen2.5-7B-Instruct), 7,615,616,512 params, on RTX 4090 D (24,564 MiB as the driver reports it)
# estimated peak per GPU (backward_start): allocated 18.39 GiB (torch.cuda.max_memory_allocated), reserved 20.02 GiB (max_memory_reserved), device 20.52 GiB (nvidia-smi)
# headroom: 2.85 GiB of the 23.37 GiB torch can use
# setup: lora, bf16, adamw, seq 2048, micro-batch 1, grad-accum 16, gradient checkpointing, sdpa, LoRA r8 alpha 32 on all-linear
# why each memory-relevant setting:
#   finetuning_type: lora  # lora: 20,185,088 trainable; full fine-tuning would need 72.49 GiB, does not fit
#   bf16: true  # bf16 weights under autocast; fp32 master weights (AMP) would need 36.10 GiB, does not fit
#   disable_gradient_checkpointing: false  # saves 14.59 GiB at seq 2048 x micro-batch 1 (off: 35.10 GiB, does not fit)
#   per_device_train_batch_size: 1  # one more sample per step adds 4.47 GiB (24.99 GiB, does not fit)
#   gradient_accumulation_steps: 16  # effective batch 16 without its activations; gradients are kept between micro-batches
#   cutoff_len: 2048  # the estimate counts every sample at this length: shorter samples need less
#   optim: adamw_torch  # adamw: 8-bit AdamW would save 0.11 GiB
#   flash_attn: sdpa  # sdpa: eager attention would peak about the same here
#   (no option: each batch padded to its longest sample)  # lengths fixed: LLaMA-Factory pads each batch to its longest sample (no option pads to cutoff_len): a batch whose samples reach the cap is the one counted
#   eval_strategy: "no"  # no evaluation during training (--evaluation none): no evaluate phase is counted
set -euo pipefail
llamafactory-cli train train.yaml
