"""ViLT (`ViltModel`) -> model=vilt: TextTransformer (depth 0) + PatchEncoder (depth 0) + MergedFusion (pre-norm).

    embeddings.text_embeddings.*         -> text_encoder (word, position + token type 0, LayerNorm)
    embeddings.patch_embeddings, cls_token, position_embeddings -> vision_encoder
    embeddings.token_type_embeddings     -> fusion.type_embeddings (modality types 0 = text, 1 = image)
    encoder.layer.i (layernorm_before / after) -> fusion.blocks.i;  layernorm -> fusion.norm;  pooler -> fusion.pooler

ViLT interpolates its patch position embeddings to the image's grid at run time (bilinear,
align_corners=True); mmbench does it once at import for `data.image_size`. HF ViLT also visits the
patches in a random order (`torch.multinomial` in `visual_embed`); attention is permutation
equivariant, so the outputs are the same tokens, permuted.
"""

from __future__ import annotations

from mmbench.models.convert.common import StateMap, activation, bert_text_embeddings, resize_grid, single_width_sizes
from mmbench.models.fusion.merged import MergedFusion
from mmbench.models.text import TextTransformer
from mmbench.models.vision.patch import PatchEncoder

MODEL_TYPE = "vilt"
PARTS = {"text_encoder": TextTransformer, "vision_encoder": PatchEncoder, "fusion": MergedFusion}


def sizes(config) -> dict:
    return {
        **single_width_sizes(config, text_depth=0, vision_depth=0, fusion_depth=config.num_hidden_layers, prenorm=True),
        "patch_size": config.patch_size,
    }


def part_kwargs(config, processor: dict) -> dict[str, dict]:
    eps, act = config.layer_norm_eps, activation(config.hidden_act)
    return {
        "text_encoder": dict(norm_eps=eps, embed_norm=True),
        "vision_encoder": dict(norm_eps=eps, patch_bias=True, embed_norm=False),
        "fusion": dict(norm_eps=eps, act_layer=act),
    }


def convert(sm: StateMap, config, model) -> None:
    bert_text_embeddings(sm, "text_encoder", "embeddings.text_embeddings", model.text_encoder.max_len)

    vision = model.vision_encoder
    grid = int(round(vision.num_patches**0.5))
    sm.affine("vision_encoder", "patch_embed", "embeddings.patch_embeddings.projection")
    sm.copy("vision_encoder", "cls_token", "embeddings.cls_token")
    pos = sm.get("embeddings.position_embeddings")[0]  # (1 + G*G, D)
    sm.put("vision_encoder", "position_embeddings", resize_grid(pos, grid, mode="bilinear", align_corners=True)[None])

    sm.put("fusion", "type_embeddings.weight", sm.get("embeddings.token_type_embeddings.weight")[:2])
    for i in range(config.num_hidden_layers):
        src, dst = f"encoder.layer.{i}", f"blocks.{i}"
        sm.attention(
            "fusion",
            f"{dst}.sublayers.self_attn",
            f"{src}.attention.attention.query",
            f"{src}.attention.attention.key",
            f"{src}.attention.attention.value",
            f"{src}.attention.output.dense",
        )
        sm.affine("fusion", f"{dst}.norms.self_attn", f"{src}.layernorm_before")
        sm.affine("fusion", f"{dst}.sublayers.mlp.fc1", f"{src}.intermediate.dense")
        sm.affine("fusion", f"{dst}.sublayers.mlp.fc2", f"{src}.output.dense")
        sm.affine("fusion", f"{dst}.norms.mlp", f"{src}.layernorm_after")
    sm.affine("fusion", "norm", "layernorm")
    sm.affine("fusion", "pooler.dense", "pooler.dense")
