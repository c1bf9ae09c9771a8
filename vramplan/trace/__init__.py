"""Measured truth: real training steps traced with fake tensors (no GPU), run on the CPU,
or measured on a CUDA card. Imports torch, except ``preflight`` (the checks that run before
torch loads) and ``quiet``; the plain planner never imports this package."""
