"""Trainers for synth data, after the Llama 3 post-training recipe: ``rm``, ``sft``, ``dpo``.

Each recipe module (:mod:`train.rm`, :mod:`train.sft`, :mod:`train.dpo`) holds a
``transformers.Trainer`` subclass plus a ``run()`` that reads top to bottom; configs are in
:mod:`train.config`, the CLI in :mod:`train.cli`, DeepSpeed ZeRO-2/3 JSON in ``train/configs/``.
"""
