"""Where the models run. A module of its own so that the score stage, which needs no
diffusion model, does not import diffusers (~5 s) to ask."""

import os

import torch


def compute_device() -> torch.device:
    """The GPU when there is one: every stage samples, scores and trains there. Under a
    launcher (dbdpo.distributed), each process of a machine takes its own GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
