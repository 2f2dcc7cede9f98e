"""The world backbone's architecture: its parts' configs and where their trained weights are.

Plain data, no torch: `dbdpo check` reads the sizes and the weight files without loading the
model stack; dbdpo.world.backbone builds the pipeline from them.
"""

from dbdpo.world import ASSETS

WORLD_WEIGHTS = {part: ASSETS / f"world_{part}.safetensors" for part in ("unet", "vae", "text_encoder")}

# The proving ground's backbone, sized for 2 CPU cores: the VAE downsamples 64 px images 4x to
# 16x16x4 latents (SD's 8x at 512 px gives 64x64x4), and the UNet attends to the text at 8
# and 4 latent pixels. 64 channels at the top level, not 32: the narrower UNet, trained alike,
# drew the prompted context half as often (docs/experiments.md, the UNet variants).
WORLD_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)
WORLD_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
    # 1 / RMS of the trained VAE's latents on world scenes: unit-scale diffusion space.
    scaling_factor=0.307,
)
WORLD_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=64,
)

# The SD 1.x/2.x training schedule (scaled-linear betas, 1000 steps).
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
