"""Bad inputs a new user types, and what mmbench must answer: the table behind
tests/test_bad_input.py (every case, through config validation) and scripts/bad_inputs.py (every
case through the real CLI, timed, written to docs/bad_inputs.md).

Each case: (overrides, expected, words). `expected` is "refused" (exit 2, one message, no
traceback, before any data is prepared) or "accepted" (validation passes: controls against
refusing too much). `words` must appear in the message: what was wrong, or what would work.
"""

from __future__ import annotations

REFUSED, ACCEPTED = "refused", "accepted"

CASES: list[tuple[list[str], str, tuple[str, ...]]] = [
    # types: a value that is not a number
    (["trainer.max_epochs=abc"], REFUSED, ("trainer.max_epochs=abc", "not an integer")),
    (["trainer.max_epochs=1.5"], REFUSED, ("trainer.max_epochs", "not an integer")),
    (["seed=abc"], REFUSED, ("seed=abc", "not an integer")),
    (["seed=1.5"], REFUSED, ("seed",)),
    (["model.vision_depth=abc"], REFUSED, ("model.vision_depth",)),
    (["data.image_size=abc"], REFUSED, ("data.image_size",)),
    (["optimizer.lr=abc"], REFUSED, ("optimizer.lr", "not a number")),
    (["objective.itc.weight=abc"], REFUSED, ("objective.itc.weight",)),
    # ranges: a number that cannot work
    (["trainer.max_epochs=0"], REFUSED, ("trainer.max_epochs=0", ">= 1")),
    (["trainer.max_steps=0"], REFUSED, ("trainer.max_steps=0",)),
    (["trainer.accumulate_grad_batches=0"], REFUSED, ("accumulate_grad_batches",)),
    (["seed=-1"], REFUSED, ("seed=-1", "non-negative")),
    (["model.dim=0"], REFUSED, ("model.dim=0", ">= 1")),
    (["model.dim=-8"], REFUSED, ("model.dim=-8",)),
    (["model.heads=0"], REFUSED, ("model.heads=0",)),
    (["model.text_dim=0"], REFUSED, ("model.text_dim=0",)),
    (["model.fusion_depth=-1"], REFUSED, ("model.fusion_depth=-1", ">= 0")),
    (["model.text_depth=-1"], REFUSED, ("model.text_depth=-1",)),
    (["model.patch_size=0"], REFUSED, ("model.patch_size=0",)),
    (["model=concat", "model.backbone_width=0"], REFUSED, ("model.backbone_width=0",)),
    (["model.mlp_ratio=0"], REFUSED, ("model.mlp_ratio",)),
    (["model.dropout=1.0"], REFUSED, ("model.dropout",)),
    (["model.dropout=-0.1"], REFUSED, ("model.dropout",)),
    (["data.image_size=0"], REFUSED, ("data.image_size=0", ">= 16")),
    (["data.image_size=8"], REFUSED, ("data.image_size=8",)),
    (["data.max_text_len=0"], REFUSED, ("data.max_text_len=0",)),
    (["data.max_text_len=2"], REFUSED, ("data.max_text_len=2",)),
    (["data.batch_size=0"], REFUSED, ("data.batch_size=0",)),
    (["data.batch_size=-4"], REFUSED, ("data.batch_size=-4",)),
    (["data.eval_batch_size=0"], REFUSED, ("data.eval_batch_size=0",)),
    (["data.num_workers=-1"], REFUSED, ("data.num_workers=-1",)),
    (["data.vocab_size=0"], REFUSED, ("data.vocab_size=0",)),
    (["data.source.num_train=0"], REFUSED, ("data.source.num_train=0", "training scene")),
    (["data.source.num_val=0"], REFUSED, ("data.source.num_val=0",)),
    (["data.source.num_test=0"], REFUSED, ("data.source.num_test=0",)),
    (["data.source.captions_per_image=0"], REFUSED, ("captions_per_image",)),
    (["data.source.questions_per_image=-1"], REFUSED, ("questions_per_image",)),
    (["data.source.max_objects=0"], REFUSED, ("max_objects",)),
    (["data.source.grid=0"], REFUSED, ("grid",)),
    (["data.source.min_objects=3", "data.source.max_objects=2"], REFUSED, ("max_objects",)),
    (["data.source.grid=2", "data.source.max_objects=5"], REFUSED, ("exceeds the 4 cells",)),
    (["data.source.num_train=100000", "data.source.grid=2", "data.source.max_objects=1"], REFUSED, ("distinct",)),
    (["data.source.holdout=[[red,blob]]"], REFUSED, ("unknown shape 'blob'",)),
    (["data.source.caption_relation_directions=3"], REFUSED, ("caption_relation_directions", "'left of' / 'above'")),
    (["data.source.caption_relation_directions=2"], ACCEPTED, ()),
    (["data=hf"], REFUSED, ("data.source.path is not set",)),
    (["data=hf", "data.source.path=/nonexistent/images", "objective=[itc]"], REFUSED, ("no such file or directory",)),
    (["data=hf", "data.source.path=./missing.jsonl", "objective=[itc]"], REFUSED, ("no such file or directory",)),
    # how a converted source stores its images, and how many threads convert them
    (
        ["data=hf", "data.source.path=owner/some-dataset", "objective=[itc]", "data.source.image_format=webp"],
        REFUSED,
        ("data.source.image_format=webp", "valid formats"),
    ),
    (
        ["data=hf", "data.source.path=owner/some-dataset", "objective=[itc]", "data.source.jpeg_quality=0"],
        REFUSED,
        ("data.source.jpeg_quality=0", "[1, 100]"),
    ),
    (
        ["data=hf", "data.source.path=owner/some-dataset", "objective=[itc]", "data.num_proc=0"],
        REFUSED,
        ("data.num_proc=0", "thread count"),
    ),
    (["optimizer.lr=-1"], REFUSED, ("optimizer.lr", "> 0")),
    (["optimizer.lr=0"], REFUSED, ("optimizer.lr",)),
    (["weight_decay=-0.1"], REFUSED, ("weight_decay",)),
    (["objective.vqa.weight=-1"], REFUSED, ("objective.vqa.weight=-1", ">= 0")),
    # the Trainer's numbers: Lightning's own checks (run when the Trainer is built, after the data and the model),
    # and values Lightning accepts but reads otherwise (a negative clip value: no clipping, and it trains)
    (["trainer.gradient_clip_val=-1"], REFUSED, ("trainer.gradient_clip_val", ">= 0", "no clipping")),
    (["trainer.gradient_clip_val=0"], ACCEPTED, ()),
    (["+trainer.gradient_clip_algorithm=nope"], REFUSED, ("gradient_clip_algorithm=nope", "value or norm")),
    (["+trainer.gradient_clip_algorithm=value"], ACCEPTED, ()),
    (["trainer.val_check_interval=0"], REFUSED, ("trainer.val_check_interval=0", "every training batch")),
    (["trainer.val_check_interval=1.5"], REFUSED, ("val_check_interval", "[0.0, 1.0] or an int")),
    (["trainer.val_check_interval=0.5", "trainer.check_val_every_n_epoch=null"], REFUSED, ("whole number of steps",)),
    (["trainer.val_check_interval=0.25"], ACCEPTED, ()),
    (["trainer.check_val_every_n_epoch=0"], REFUSED, ("check_val_every_n_epoch=0", ">= 1")),
    (["trainer.log_every_n_steps=0"], REFUSED, ("log_every_n_steps=0", ">= 1")),
    (["trainer.limit_train_batches=0"], REFUSED, ("limit_train_batches=0", "train nothing")),
    (["trainer.limit_val_batches=0"], REFUSED, ("limit_val_batches=0", "monitor.metric")),
    (["trainer.limit_test_batches=0"], REFUSED, ("limit_test_batches=0", "test=false")),
    (["trainer.limit_train_batches=-1"], REFUSED, ("limit_train_batches", "[0.0, 1.0] or an int")),
    (["trainer.limit_train_batches=abc"], REFUSED, ("limit_train_batches=abc", "not a number")),
    (["trainer.overfit_batches=-1"], REFUSED, ("overfit_batches",)),
    (["trainer.num_sanity_val_steps=-2"], REFUSED, ("num_sanity_val_steps=-2",)),
    (["trainer.fast_dev_run=-1"], REFUSED, ("fast_dev_run=-1",)),
    (["trainer.devices=0"], REFUSED, ("trainer.devices=0",)),
    (["trainer.precision=fp16"], REFUSED, ("trainer.precision=fp16", "bf16-mixed")),
    (["trainer.precision=16-mixed"], REFUSED, ("CPU", "trainer.precision=32")),
    (["trainer.memory_check=maybe"], REFUSED, ("trainer.memory_check=maybe", "true")),
    (["trainer.memory_check=false"], ACCEPTED, ()),
    # the optimizer and the schedule, asked of their own constructors
    (["optimizer.betas=[1.0,0.98]"], REFUSED, ("Invalid beta parameter", "optimizer.betas=[0.9,0.98]")),
    (["optimizer.eps=-1"], REFUSED, ("Invalid epsilon value", "eps >= 0")),
    (["+optimizer.weight_decay=-0.1"], REFUSED, ("optimizer.weight_decay=-0.1 is not read", "weight_decay >= 0")),
    (["+optimizer.weight_decay=0.1"], REFUSED, ("not read", "use weight_decay=0.1")),
    (["scheduler.warmup_ratio=1.5"], REFUSED, ("warmup_ratio=1.5", "[0, 1]")),
    (["scheduler.warmup_ratio=-0.1"], REFUSED, ("warmup_ratio=-0.1",)),
    (["+scheduler.min_lr_ratio=2"], REFUSED, ("min_lr_ratio=2",)),
    # an objective's or a part's own check of its settings (the constructor raises the same)
    (["objective.itc.temperature_init=0"], REFUSED, ("objective.itc.temperature_init=0", "> 0")),
    (["objective.itc.temperature_init=1.0"], REFUSED, ("temperature_init=1.0", "never be learnt")),
    (["objective.itc.min_temperature=0.6"], REFUSED, ("min_temperature=0.6 > max_temperature=0.5",)),
    (["objective.itc.queue_size=-5"], REFUSED, ("objective.itc.queue_size=-5", ">= 0")),
    (["objective.itc.momentum=1.5"], REFUSED, ("objective.itc.momentum=1.5", "[0, 1]")),
    (["objective.itc.queue_size=16", "objective.itc.text_negatives=true"], REFUSED, ("queue_size=0",)),
    (["objective.mlm.mask_prob=0"], REFUSED, ("objective.mlm.mask_prob=0", "(0, 1]")),
    (["objective.mlm.mask_prob=1.5"], REFUSED, ("objective.mlm.mask_prob=1.5",)),
    (["objective=[itc,itm]", "objective.itm.hard_negative_warmup=2"], REFUSED, ("hard_negative_warmup=2", "[0, 1]")),
    (["model=blip2", "objective=[itc,itm,lm]", "objective.lm.label_smoothing=1.0"], REFUSED, ("label_smoothing=1.0",)),
    (["objective=[itc,mrm]", "objective.mrm.mask_prob=0"], REFUSED, ("objective.mrm.mask_prob=0",)),
    (
        ["objective=[t2i_diffusion]", "objective.t2i_diffusion.caption_dropout=1"],
        REFUSED,
        ("objective.t2i_diffusion.caption_dropout=1", "[0, 1)"),
    ),
    (
        ["objective=[t2i_diffusion]", "model=concat", "data.image_size=42"],  # 3 U-Net levels: halved twice
        REFUSED,
        ("divisible by 4, but it is 42",),
    ),
    (["objective=[t2i_diffusion]", "model=llava"], ACCEPTED, ()),
    (["model=blip2", "model.fusion_depth=0"], REFUSED, ("fusion.qformer.depth=0", "model.fusion_depth")),
    (["model=blip2", "fusion.qformer.num_queries=0"], REFUSED, ("fusion.qformer.num_queries=0",)),
    (["model=blip2", "fusion.qformer.cross_attention_freq=0"], REFUSED, ("cross_attention_freq=0",)),
    (["model=flamingo", "fusion.resampler.num_latents=0"], REFUSED, ("fusion.resampler.num_latents=0",)),
    (["model=llava", "fusion=gated_xattn_lm", "fusion.every=0"], REFUSED, ("fusion.every=0", ">= 1")),
    # training-image augmentation (mmbench/data/augment.py)
    (["data.augment.crop_scale=[0.5,1.5]"], REFUSED, ("data.augment.crop_scale=1.5", "<= 1")),
    (["data.augment.crop_scale=[0.9,0.5]"], REFUSED, ("data.augment.crop_scale=[0.9, 0.5]", "low <= high")),
    (["data.augment.crop_scale=0.5"], REFUSED, ("data.augment.crop_scale=0.5", "a range")),
    (["data.augment.flip=true"], REFUSED, ("data.augment.flip=true on Shapes", "crop_scale")),
    (["data.augment.flip=yes"], REFUSED, ("data.augment.flip",)),
    (["data.augment.crop_scale=[0.5,1.0]"], ACCEPTED, ()),
    (["+data.augment.rotate=15"], REFUSED, ("data.augment.rotate: unknown setting", "crop_scale, crop_ratio and flip")),
    # LoRA (mmbench/models/lora.py)
    (["model=llava", "language_model.lora.r=-4"], REFUSED, ("language_model.lora.r=-4", "rank >= 0")),
    (["model=llava", "language_model.lora.r=2.5"], REFUSED, ("language_model.lora.r=2.5", "not an integer")),
    (["model=llava", "language_model.lora.r=8", "language_model.lora.dropout=1"], REFUSED, ("lora.dropout=1",)),
    (
        ["model=llava", "language_model.lora.r=8", "language_model.lora.alpha=0"],
        REFUSED,
        ("lora.alpha=0", "integer > 0"),
    ),
    (["model=llava", "language_model.lora.r=8", "language_model.lora.target_modules=[]"], REFUSED, ("target_modules",)),
    (["model=llava", "language_model.lora.r=16", "language_model.freeze=true"], ACCEPTED, ()),
    (
        ["model=llava", "+language_model.lora.rank=8"],
        REFUSED,
        ("language_model.lora.rank: unknown setting", "r, alpha"),
    ),
    # training stages: the stage-0 LM recipe, the frozen-LM connectors, text-to-image's second stage
    (
        ["experiment=lm_stage0", "objective.lm_text.texts=[caption,answers]"],
        REFUSED,
        ("objective.lm_text.texts=", "['caption', 'qa']"),
    ),
    (["experiment=lm_stage0", "objective.lm_text.qa_context=maybe"], REFUSED, ("qa_context=maybe", "true or false")),
    (
        ["experiment=lm_stage0", "objective.lm_text.qa_context=true", "objective.lm_text.texts=[caption]"],
        REFUSED,
        ("qa_context=true", "needs the qa texts"),
    ),
    (["experiment=lm_stage0", "objective.lm_text.max_offset=-1"], REFUSED, ("objective.lm_text.max_offset=-1", ">= 0")),
    (["experiment=lm_stage0", "objective.lm_text.qa_context=true"], ACCEPTED, ()),
    (
        ["model=concat", "objective=[lm_text]"],
        REFUSED,
        ("objective 'lm_text' uses a language model", "language_model=gpt"),
    ),
    (["experiment=connector_frozen", "hydra.mode=RUN"], REFUSED, ("later training stage", "model.init_from=")),
    (
        ["experiment=t2i_ar_stage2", "hydra.mode=RUN"],
        REFUSED,
        ("'t2i_ar' is a later training stage", "model.init_from="),
    ),
    (["objective=[itc,itm]", "objective.itm.text_negatives=maybe"], REFUSED, ("text_negatives=maybe", "true or false")),
    # a batch larger than the training split (Shapes: scenes x captions per image (image, caption) examples)
    (["data.batch_size=100000"], REFUSED, ("data.batch_size=100000", "32000 (image, caption) examples", "<= 32000")),
    (["data.source.num_train=10", "data.batch_size=64"], REFUSED, ("40 (image, caption) examples",)),
    (["data.batch_size=256", "data.source.num_train=64"], ACCEPTED, ()),  # 64 x 4 = 256: the whole split, allowed
    # values that do not fit each other
    (["model.heads=3"], REFUSED, ("not divisible by model.heads=3", "model.heads=2")),
    (["model.vision_heads=5"], REFUSED, ("model.vision_heads=5",)),
    (["model.patch_size=7"], REFUSED, ("not divisible by patch size 7",)),
    (["encoder.vision.positions=rotary"], REFUSED, ("encoder.vision.positions=rotary: one of learned, sincos",)),
    (["encoder/vision=conv", "encoder.vision.positions=sincos"], ACCEPTED, ()),
    (["model.size=huge"], REFUSED, ("model.size=huge", "tiny, small, base")),
    (["model.size=Tiny"], REFUSED, ("tiny, small, base",)),
    # encoders / objectives x data: a field the data does not have
    (["encoder/vision=region_feats"], REFUSED, ("region_feats", "encoder/vision=region")),
    (
        ["data=hf", "data.source.path=owner/some-dataset", "objective=[itc,itm]", "objective.itm.text_negatives=true"],
        REFUSED,
        ("negative_ids", "text_negatives=false"),
    ),
    (["model=lxmert", "encoder/vision=region_feats"], REFUSED, ("region_feats",)),
    (["data.source.questions_per_image=0"], REFUSED, ("objective 'vqa'", "question_ids")),
    (["objective=[classify]"], REFUSED, ("objective 'classify'", "labels")),
    # objectives x fusion
    (["model=clip", "objective=[itm]"], REFUSED, ("objective 'itm'", "joint_pooled")),
    (["model=clip", "objective=[vqa]"], REFUSED, ("objective 'vqa'",)),
    (["model=concat", "objective=[mlm]"], REFUSED, ("objective 'mlm'", "text_tokens")),
    # monitoring and evaluation
    (["monitor.metric=val/nope"], REFUSED, ("monitor.metric=val/nope", "val/loss")),
    (["monitor.metric=train/loss"], REFUSED, ("monitor.metric=train/loss",)),
    (["monitor.metric=val/itm/acc"], REFUSED, ("monitor.metric=val/itm/acc", "itc, mlm, vqa")),
    (["monitor.mode=up"], REFUSED, ("monitor.mode=up", "min or max")),
    (["eval.protocols=[nope]"], REFUSED, ("unknown protocol", "retrieval")),
    (["eval.protocols=[vqa,retreival]"], REFUSED, ("retreival",)),
    (["+eval.retrieval.rerank=8"], REFUSED, ("eval.retrieval: unknown setting(s) ['rerank']", "rerank_k")),
    # a search over objective weights that optimises the loss they scale
    (
        ["hparams_search=optuna", "monitor.metric=val/loss", "monitor.mode=min"],
        REFUSED,
        ("objective.itm.weight", "val/vqa/acc"),
    ),
    (["hparams_search=optuna", "hydra.sweeper.n_trials=1"], ACCEPTED, ()),
    # pretrained weights
    (["model.init_from=/nonexistent/vilt"], REFUSED, ("model.init_from=/nonexistent/vilt", "no such directory")),
    (["model.init_from=./missing_dir"], REFUSED, ("no such directory",)),
    # several problems at once: all of them, in one message
    (
        ["model.dim=0", "optimizer.lr=-1", "data.batch_size=0"],
        REFUSED,
        ("model.dim=0", "optimizer.lr", "data.batch_size=0"),
    ),
    # controls: must pass validation
    ([], ACCEPTED, ()),
    (["model=clip", "objective=[itc]"], ACCEPTED, ()),
    (["model=visualbert"], ACCEPTED, ()),
    (["model=lxmert"], ACCEPTED, ()),
    (["model.dim=64", "model.heads=4"], ACCEPTED, ()),
    (["monitor.metric=val/vqa/acc", "monitor.mode=max"], ACCEPTED, ()),
    (["data.source.questions_per_image=0", "objective=[itc,itm]"], ACCEPTED, ()),
    (["trainer.max_epochs=-1", "trainer.max_steps=10"], ACCEPTED, ()),
    (["eval.protocols=[vqa]"], ACCEPTED, ()),
    (["data=hf", "data.source.path=owner/some-dataset", "objective=[itc]"], ACCEPTED, ()),  # a hub id: looked up later
    (["objective=[itc,itm]", "objective.itm.text_negatives=true"], ACCEPTED, ()),  # Shapes writes caption_negatives
    (["model.init_from=dandelin/vilt-b32-mlm"], ACCEPTED, ()),  # a hub id: resolved (offline) later
]
