"""LXMERT (`LxmertModel`) -> model=lxmert with encoder/vision=region_feats:
TextTransformer (l_layers) + RegionFeatureEncoder (r_layers, no [IMG] token) + CrossEncoderFusion (x_layers).

    embeddings.*                         -> text_encoder (word, position + token type 0, LayerNorm)
    encoder.layer.i                      -> text_encoder.stack.blocks.i (language layers)
    encoder.visn_fc.{visn_fc, visn_layer_norm} -> vision_encoder.embed.{feat_fc, feat_norm}
    encoder.visn_fc.{box_fc, box_layer_norm}   -> vision_encoder.embed.box.{fc, norm}; box_fc's 4 input
                                            columns are the first 4 of mmbench's 7-d box geometry (x0, y0,
                                            x1, y1, w, h, area); the other 3 get zero weights
    encoder.r_layers.i                   -> vision_encoder.stack.blocks.i (object-relationship layers)
    encoder.x_layers.i.visual_attention  -> fusion.layers.i.cross_attn (shared by both directions)
    encoder.x_layers.i.{lang,visn}_self_att, _inter, _output -> fusion.layers.i.{text,image}_block
    pooler                               -> fusion.pooler
"""

from __future__ import annotations

import torch

from mmbench.models.convert.common import StateMap, activation, bert_layer, bert_text_embeddings, single_width_sizes
from mmbench.models.fusion.cross_encoder import CrossEncoderFusion
from mmbench.models.text import TextTransformer
from mmbench.models.vision.region import BoxEmbedding, RegionFeatureEncoder

MODEL_TYPE = "lxmert"
PARTS = {"text_encoder": TextTransformer, "vision_encoder": RegionFeatureEncoder, "fusion": CrossEncoderFusion}


def sizes(config) -> dict:
    return {
        **single_width_sizes(
            config,
            text_depth=config.l_layers,
            vision_depth=config.r_layers,
            fusion_depth=config.x_layers,
            prenorm=False,
        ),
        "region_feat_dim": config.visual_feat_dim,
    }


def part_kwargs(config, processor: dict) -> dict[str, dict]:
    eps = 1e-12  # LXMERT's LayerNorms are hard-coded to BERT's 1e-12
    act = activation(config.hidden_act)
    return {
        "text_encoder": dict(norm_eps=eps, act_layer=act, embed_norm=True),
        "vision_encoder": dict(norm_eps=eps, img_token=False, boxes=True),
        "fusion": dict(norm_eps=eps),
    }


def _block(sm: StateMap, dst: str, src: str, stream: str) -> None:
    """x_layers.i.{lang,visn}_self_att / _inter / _output -> a post-norm self-attention + FFN Block."""
    att = f"{src}.{stream}_self_att"
    sm.attention(
        "fusion",
        f"{dst}.sublayers.self_attn",
        f"{att}.self.query",
        f"{att}.self.key",
        f"{att}.self.value",
        f"{att}.output.dense",
    )
    sm.affine("fusion", f"{dst}.norms.self_attn", f"{att}.output.LayerNorm")
    sm.affine("fusion", f"{dst}.sublayers.mlp.fc1", f"{src}.{stream}_inter.dense")
    sm.affine("fusion", f"{dst}.sublayers.mlp.fc2", f"{src}.{stream}_output.dense")
    sm.affine("fusion", f"{dst}.norms.mlp", f"{src}.{stream}_output.LayerNorm")


def convert(sm: StateMap, config, model) -> None:
    if config.visual_pos_dim != 4:
        raise ValueError(f"LXMERT visual_pos_dim={config.visual_pos_dim}; mmbench boxes are (x0, y0, x1, y1)")
    bert_text_embeddings(sm, "text_encoder", "embeddings", model.text_encoder.max_len)
    for i in range(config.l_layers):
        bert_layer(sm, "text_encoder", f"stack.blocks.{i}", f"encoder.layer.{i}")

    v = "encoder.visn_fc"
    sm.affine("vision_encoder", "embed.feat_fc", f"{v}.visn_fc")
    sm.affine("vision_encoder", "embed.feat_norm", f"{v}.visn_layer_norm")
    box = sm.get(f"{v}.box_fc.weight")  # (D, 4)
    pad = box.new_zeros(box.shape[0], BoxEmbedding.num_features - box.shape[1])
    sm.put("vision_encoder", "embed.box.fc.weight", torch.cat([box, pad], dim=1))  # (D, 7)
    sm.copy("vision_encoder", "embed.box.fc.bias", f"{v}.box_fc.bias")
    sm.affine("vision_encoder", "embed.box.norm", f"{v}.box_layer_norm")
    for i in range(config.r_layers):
        bert_layer(sm, "vision_encoder", f"stack.blocks.{i}", f"encoder.r_layers.{i}")

    for i in range(config.x_layers):
        src, dst = f"encoder.x_layers.{i}", f"layers.{i}"
        att = f"{src}.visual_attention"
        sm.attention(
            "fusion",
            f"{dst}.cross_attn.sublayers.cross_attn",
            f"{att}.att.query",
            f"{att}.att.key",
            f"{att}.att.value",
            f"{att}.output.dense",
        )
        sm.affine("fusion", f"{dst}.cross_attn.norms.cross_attn", f"{att}.output.LayerNorm")
        _block(sm, f"{dst}.text_block", src, "lang")
        _block(sm, f"{dst}.image_block", src, "visn")
    sm.affine("fusion", "pooler.dense", "pooler.dense")
