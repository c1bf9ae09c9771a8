#!/usr/bin/env bash
# vramplan plan for swift: qwen2.5-7b (Qwen/Qwen2.5-7B-Instruct), 7,615,616,512 params, on RTX 4090 D (24,564 MiB as the driver reports it)
# estimated peak per GPU (backward_start): allocated 18.39 GiB (torch.cuda.max_memory_allocated), reserved 20.02 GiB (max_memory_reserved), device 20.52 GiB (nvidia-smi)
# headroom: 2.85 GiB of the 23.37 GiB torch can use
# setup: lora, bf16, adamw, seq 2048, micro-batch 1, grad-accum 16, gradient checkpointing, sdpa, LoRA r8 alpha 32 on all-linear
# why each memory-relevant setting:
#   --tuner_type lora  # lora: 20,185,088 trainable; full fine-tuning would need 72.49 GiB, does not fit
#   --torch_dtype bfloat16 --bf16 true  # bf16 weights under autocast; fp32 master weights (AMP) would need 36.10 GiB, does not fit
#   --gradient_checkpointing true  # saves 14.59 GiB at seq 2048 x micro-batch 1 (off: 35.10 GiB, does not fit)
#   --per_device_train_batch_size 1  # one more sample per step adds 4.47 GiB (24.99 GiB, does not fit)
#   --gradient_accumulation_steps 16  # effective batch 16 without its activations; gradients are kept between micro-batches
#   --max_length 2048  # the estimate counts every sample at this length: shorter samples need less
#   --optim adamw_torch  # adamw: 8-bit AdamW would save 0.11 GiB
#   --attn_impl sdpa  # sdpa: eager attention would peak about the same here
#   (no option: each batch padded to its longest sample)  # lengths fixed: ms-swift pads each batch to its longest sample (no option pads to --max_length): a batch whose samples reach the cap is the one counted
#   --eval_strategy no  # no evaluation during training (--evaluation none): no evaluate phase is counted
# ms-swift 4.x options (--tuner_type; ms-swift 3.x spelled it --train_type)
set -euo pipefail
swift sft \
    --model Qwen/Qwen2.5-7B-Instruct \
    --use_hf true \
    --dataset self_cognition.jsonl \
    --tuner_type lora \
    --torch_dtype bfloat16 \
    --bf16 true \
    --fp16 false \
    --lora_rank 8 \
    --lora_alpha 32 \
    --lora_dropout 0.05 \
    --target_modules all-linear \
    --attn_impl sdpa \
    --gradient_checkpointing true \
    --max_length 2048 \
    --per_device_train_batch_size 1 \
    --gradient_accumulation_steps 16 \
    --optim adamw_torch \
    --eval_strategy no \
    --learning_rate 1e-4 \
    --num_train_epochs 3 \
    --output_dir output \
    --logging_steps 10
