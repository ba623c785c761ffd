"""Print the parameter table (total and per component) of every model preset at every size.

    .venv/bin/python scripts/param_table.py [--vocab 30522] [--sizes tiny,small,base]

Models are built from the composed configs exactly as `mmbench-train` builds them (objective heads
excluded). tiny/small use the Shapes settings (48 px images, 32 text positions); base uses 224 px
images and 512 text positions, so that every base preset has its published patch size.
"""

from __future__ import annotations

import argparse

from mmbench.builder import build_model
from mmbench.config import CONFIG_DIR, choices_of, compose_train
from mmbench.data.datamodule import DataInfo

SIZE_OVERRIDES = {"base": ["data.image_size=224", "data.max_text_len=512"]}


def count(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary size (default: BERT's)")
    parser.add_argument("--sizes", default="tiny,small,base")
    args = parser.parse_args()
    presets = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    print(
        "| model | size | encoder/text | encoder/vision | fusion | language_model | text | vision | fusion params "
        "| LM params | total |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in presets:
        for size in args.sizes.split(","):
            cfg = compose_train([f"model={name}", f"model.size={size}", *SIZE_OVERRIDES.get(size, [])])
            info = DataInfo.of_vocab(args.vocab, max_text_len=cfg.data.max_text_len, image_size=cfg.data.image_size)
            model = build_model(cfg, info)
            choices = choices_of(cfg)
            lm = model.language_model  # registered once; the text part and connectors hold it by reference
            print(
                f"| {name} | {size} | {choices['encoder/text']} | {choices['encoder/vision']} | {choices['fusion']} | "
                f"{choices.get('language_model', 'none')} | {count(model.text_encoder)} | {count(model.vision_encoder)} | "
                f"{count(model.fusion)} | {count(lm) if lm is not None else '-'} | {count(model)} |",
                flush=True,
            )
            del model


if __name__ == "__main__":
    main()
