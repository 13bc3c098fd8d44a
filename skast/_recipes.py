"""Constants and presets of the AST references, in one place, without torch.

The sample rate and mel bins of every published AST model, the feature
statistics and hyper-parameters of the original recipes
(``egs/*/run*.sh`` of YuanGongND/ast; reference/ast.md 2.6), and the small
randomly initialised model that the command line's demo and the examples run
on a CPU. Importing this module imports nothing but the standard library.

Examples
--------
>>> from skast._recipes import NORM_STATS, RECIPES, SAMPLE_RATE
>>> SAMPLE_RATE, NORM_STATS["esc50"]
(16000, (-6.6268077, 5.358466))
>>> sorted(RECIPES)
['audioset', 'esc50', 'speechcommands']
"""

__all__ = [
    "BACKENDS",
    "CHECKPOINT",
    "DISTRIBUTED_TIMEOUT",
    "EMBED_PART_SIZE",
    "NORM_STATS",
    "NUM_MEL_BINS",
    "POOLINGS",
    "RECIPES",
    "SAMPLE_RATE",
    "TINY",
]

#: The sample rate every clip is converted to, in Hz (the AST models' rate).
SAMPLE_RATE = 16000

#: Mel bins of the kaldi filterbank the AST models take.
NUM_MEL_BINS = 128

#: The AST paper's AudioSet model on the Hugging Face hub (10x10 strides,
#: 1024 frames): what the command line and the examples start from.
CHECKPOINT = "MIT/ast-finetuned-audioset-10-10-0.4593"

#: Files per part of a ``skast embed`` job: the work a killed run can lose,
#: and the unit that ``--shard`` deals out (skast._jobs).
EMBED_PART_SIZE = 1024
#: What runs the fitted model's inference (the ``backend`` parameter):
#: PyTorch, or ONNX Runtime on the CPU (:mod:`skast._onnx`).
BACKENDS = ("torch", "onnxruntime")

#: How the encoder's tokens are pooled into one vector (the ``pooling``
#: parameter): their mean, the [CLS] or distillation token, the patches' mean.
POOLINGS = ("mean", "cls", "dist", "patch")

#: Seconds a rank of a data-parallel fit waits for its peers at a collective
#: before it fails (the ``SKAST_DISTRIBUTED_TIMEOUT`` environment variable).
DISTRIBUTED_TIMEOUT = 600

#: ``(mean, std)`` of the log-mel features of the original AST recipes.
NORM_STATS = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}

#: Hyper-parameters of the original recipes (``egs/*/run*.sh``; reference/ast.md 2.6).
RECIPES = {
    "esc50": dict(
        learning_rate=1e-5,
        max_epochs=25,
        batch_size=48,
        freqm=24,
        timem=96,
        mixup=0.0,
        max_length=512,
        normalize="esc50",
        warmup_steps=0,
        lr_decay_start=5,
        lr_decay_every=1,
        lr_decay=0.85,
        sampler=None,
        weight_averaging=None,
    ),
    "speechcommands": dict(
        learning_rate=2.5e-4,
        max_epochs=30,
        batch_size=128,
        freqm=48,
        timem=48,
        mixup=0.6,
        max_length=128,
        normalize="speechcommands",
        warmup_steps=0,
        lr_decay_start=5,
        lr_decay_every=1,
        lr_decay=0.85,
        sampler=None,
        weight_averaging=None,
    ),
    "audioset": dict(
        learning_rate=1e-5,
        max_epochs=5,
        batch_size=12,
        freqm=48,
        timem=192,
        mixup=0.5,
        max_length=1024,
        normalize="audioset",
        warmup_steps=1000,
        lr_decay_start=2,
        lr_decay_every=1,
        lr_decay=0.5,
        # the full set's (egs/audioset/run.sh, set=full); the balanced set's
        # recipe averages epochs 6-25 of 25
        sampler="balanced",
        weight_averaging=(1, 5),
    ),
}

#: A small AST (``ASTConfig`` fields) that trains on a CPU in seconds: what
#: ``skast demo`` and the examples run when no checkpoint is given.
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "frequency_stride": 16,
    "time_stride": 16,
}
