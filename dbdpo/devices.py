"""Where the models run. A module of its own so that the score stage, which needs no
diffusion model, does not import diffusers (~5 s) to ask."""

import torch


def compute_device() -> torch.device:
    """The GPU when there is one: every stage samples, scores and trains there."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
