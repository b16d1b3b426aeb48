"""Test-wide settings: one CPU thread per process (two cores are shared with subprocesses
and parallel jobs; more threads spin against each other), W&B never contacted."""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(1)
