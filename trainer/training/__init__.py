"""Training stage: SFT (and GRPO), several GPUs, progress and token counts, the loss curve."""
