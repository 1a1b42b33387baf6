"""mixpretrain.models: the ViT-3D masked autoencoder and its reusable encoder.

    from mixpretrain.models import build_mae, load_encoder, save_encoder
    model = build_mae("base", img_size=(128, 128, 64), patch_size=16)
    out = model(x)                     # MAEOutput(loss [B], pred [B, N, P*C], mask [B, N])
    save_encoder(model, "encoder.pt")  # weights + metadata, no pickle
    enc = load_encoder("encoder.pt", img_size=160)  # sin-cos position embeddings recomputed

Torch only (no deepspeed / webdataset / wandb), so it runs wherever torch does.
"""

from .export import FORMAT_VERSION, load_encoder, read_encoder_file, save_encoder
from .flops import mae_forward_flops, n_masked, train_flops, transformer_forward_flops
from .mae3d import MAE3D, PRESETS, MAEEncoder, MAEOutput, build_mae, masked_patch_loss
from .patches import grid_shape, patchify, unpatchify
from .posembed import POS_EMBED_KIND, sincos_3d

__all__ = [
    "FORMAT_VERSION",
    "MAE3D",
    "MAEEncoder",
    "MAEOutput",
    "POS_EMBED_KIND",
    "PRESETS",
    "build_mae",
    "grid_shape",
    "load_encoder",
    "mae_forward_flops",
    "masked_patch_loss",
    "n_masked",
    "patchify",
    "read_encoder_file",
    "save_encoder",
    "sincos_3d",
    "train_flops",
    "transformer_forward_flops",
    "unpatchify",
]
