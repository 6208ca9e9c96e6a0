"""`MAMLTrainConfig`: the typed configuration of a MAML meta-training run.

Config is data: the trainer's flags parse into it, `train` writes it beside the run, and the
exporter rebuilds the model (and its serving preprocessing) from it without any dataset. The
allowed values of each mode are imported from the package that defines the mode, so that
there is one list of each.
"""

import dataclasses
import json
from typing import Optional

from keras_meta._checks import is_finite_number, is_int
from keras_meta.data.image_preprocessing import ImagePreprocessing
from keras_meta.data.omniglot import IMAGES_PER_CLASS as OMNIGLOT_IMAGES_PER_CLASS
from keras_meta.data.omniglot import PROTOCOLS as OMNIGLOT_PROTOCOLS
from keras_meta.data.omniglot import omniglot_split_sizes
from keras_meta.data.sinusoid import STREAMS as SINUSOID_STREAMS
from keras_meta.layers import BATCH_NORM_MODES
from keras_meta.maml import LR_MODES, TASK_BATCHING_MODES
from keras_meta.training.distribute import STRATEGIES
from keras_meta.training.task_families import TASK_FAMILIES
MIXED_PRECISION_POLICIES = (None, "mixed_float16", "mixed_bfloat16")
META_LR_SCHEDULES = ("constant", "cosine")

# Fields that shape the variables: a checkpoint cannot be resumed if they change.
# (eval_inner_steps no longer does: per-step rates and slots exist for inner_steps only.)
ARCHITECTURE_FIELDS = ("task_family", "num_ways", "batch_norm", "learn_inner_lr", "inner_steps",
                       "image_size", "image_channels", "backbone", "conv4_downsample",
                       "conv4_filters", "pooling", "resnet12_widths")
BACKBONES = ("conv4", "resnet12")
CONV4_DOWNSAMPLING = ("stride", "maxpool")
POOLINGS = (None, "mean", "flatten")
IMAGE_CACHE_MODES = ("auto", "memory", "mapped")


@dataclasses.dataclass(frozen=True)
class MAMLTrainConfig:
    """Everything that defines a MAML meta-training run (the trainer's flags map onto it).

    Args:
        task_family: the distribution tasks are drawn from: "sinusoid", "omniglot" or
            "images" (any TFDS image dataset or folder of images: `dataset`).
        inner_lr: inner SGD step size alpha.
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps at evaluation; the first is the headline figure, the
            others are also reported (sinusoid: 1, 5, 10). They may exceed `inner_steps`:
            per-step rates and batch-norm slots then reuse the last trained step's (MAML++).
        first_order: first-order MAML (default: exact second order).
        learn_inner_lr: None, "per_variable", "per_step" (MAML++) or "per_coordinate" (Meta-SGD).
        multi_step_loss: MAML++ multi-step loss (query loss after every inner step, equal weights).
        multi_step_loss_weights: with `multi_step_loss`, `None` (equal weights) or one
            weight per inner step: the meta-loss is the weighted sum of the query losses after
            each step, e.g. (0.5, 0, 0, 0, 0.5) trains for 1 and 5 steps at once.
        multi_step_loss_anneal_iterations: with `multi_step_loss`, 0 keeps the weights equal;
            N > 0 moves them onto the last step over the first N iterations, as MAML++ does
            (`MultiStepLossSchedule`), then trains on the last step's loss only.
        first_order_iterations: derivative-order annealing (MAML++): first-order MAML for
            the first N iterations, exact second order afterwards (0: from the start).
        meta_lr_schedule: "constant" or "cosine": cosine annealing of the outer learning
            rate from `meta_lr` to `meta_lr_min` over `num_iterations` (MAML++).
        meta_lr_min: the outer learning rate at the end of a cosine schedule.
        meta_batch_size: tasks per outer step.
        meta_lr: outer Adam learning rate beta.
        num_iterations: outer steps.
        num_ways: classes per episode (classification).
        num_shots: support examples per class (sinusoid: support points).
        num_queries: query examples per class (sinusoid: query points).
        eval_num_shots / eval_num_queries: the same at evaluation (default: as in training).
        batch_norm: "transductive", "per_step" or "none" (classification backbone).
        image_size: side of the square images fed to the backbone.
        image_channels: task family "images": 3 (RGB) or 1 (greyscale) model inputs.
        backbone: "conv4" or "resnet12" (task family "images"; Omniglot uses conv4).
        conv4_downsample: "stride" (the MAML paper's Omniglot network, 64 filters) or
            "maxpool" (its mini-ImageNet network, 32 filters); Omniglot uses "stride".
        conv4_filters: conv4's filters (None: 64 for "stride", 32 for "maxpool").
        pooling: conv4's features before the dense layer: "mean" (the spatial mean, as the
            MAML paper's strided network), "flatten", or None for the network's own default
            ("mean" for "stride", "flatten" for "maxpool"). Runs saved before this field
            existed flattened, and load as "flatten".
        resnet12_widths: the four block widths of "resnet12".
        dataset: task family "images": "tfds:NAME[:CONFIG]" or "folder:PATH".
        class_split: task family "images": a standard class split's name (e.g. "cifar_fs",
            "fc100", "mini_imagenet", "cub", "omniglot_maml"), a split file's path, or None
            (a folder's train/val/test subfolders, else a seeded 64/16/20% split).
        tfds_split: TFDS splits whose examples are pooled before the class split (None: all).
        image_key / label_key / group_key: TFDS features of the image, its class and (for a
            split by superclass, e.g. FC100) the class's group (None: the split file's).
        invert_images: task family "images": serve 1 - x (dark strokes on light paper).
        rotations: task family "images": 1, or 4 to make each quarter turn of a class a
            class of its own (Omniglot's augmentation; square images).
        augmentation: "none" or "crop_flip" (random crops after padding by a tenth of the
            side, and horizontal flips, of meta-training episodes; never at evaluation).
        cache_dir: where decoded images are cached (default: under `data_dir`).
        image_cache: "auto" (in memory unless the cache exceeds half the machine's memory),
            "memory" or "mapped" (memory-mapped, read per episode).
        tfds_download: let TFDS download and prepare a missing dataset (needs the internet).
        omniglot_protocol: "maml" (1100/100/423 character split) or "background_evaluation".
        eval_within_alphabet: Omniglot: the final test also reports `num_ways`-way tasks
            whose characters all come from one alphabet, upright (Lake et al.'s harder
            within-alphabet tasks), under "within_alphabet" in the results.
        omniglot_source_dir: local directory with the Omniglot zips and TFDS checksums
            (offline); `None` uses `$KERAS_META_OMNIGLOT_DIR` when set, else `tfds.load`
            online.
        data_dir: where TFDS data is prepared (default: TFDS's own).
        eval_every: validate every N iterations (0: never); the best checkpoint is kept.
        num_val_tasks: validation tasks.
        num_eval_tasks: final test tasks (the MAML protocol: 600).
        checkpoint_every: save a checkpoint every N iterations.
        log_every: print a progress line and write summaries every N iterations.
        seed: seeds the initialisation and every episode stream.
        jit_compile: XLA-compile the meta-train step (single device; a TPU compiles anyway).
        strategy: `tf.distribute` strategy of meta-training: "default" (none), "one_device",
            "mirrored", "multi_worker" (cluster from TF_CONFIG) or "tpu". The meta-batch is
            split across replicas, so `meta_batch_size` must divide by their number.
            Evaluation runs on one replica; with "multi_worker", each worker evaluates a
            block of the tasks and the blocks are gathered (the same result as one process).
        tpu: the TPU for strategy "tpu" (name, "local" or grpc:// address; None: auto).
        worker_timeout_seconds: strategy "multi_worker": how long a worker waits for the
            others (to join the cluster, at each collective, between heartbeats) before it
            fails with an error naming them, rather than hanging.
        mixed_precision: None, "mixed_float16" (with loss scaling, inner loop included) or
            "mixed_bfloat16": the Keras dtype policy of the model; variables stay float32.
        task_batching: "auto" (the fastest of the loop, the batched pass and chunks of it,
            timed on the first meta-batch and cached per machine: `MAML.autotune`),
            "batched" or "loop" (see `MAML`).
        recompute_inner_steps: 0 (off) or k: recompute inner steps in segments of k.
        task_chunk_size: 0 (all tasks in one pass) or the tasks per batched pass.
        fused_batch_norm: task-batched batch norm through TensorFlow's fused op (default,
            faster) or plain ops (`False`); same meta-gradient up to float32 rounding (see
            `MAML`).
        steps_per_execution: outer steps per compiled call.
        sinusoid_stream: which mapping of episode indices to sinusoid tasks the run draws
            (`keras_meta.data.sinusoid`): 2, or 1, that of runs started before stream 2
            existed (their saved configs read as 1, so they resume on their own tasks).
        image_preprocessing: `ImagePreprocessing.get_config()` of the images the model takes
            (classification), or `None` for the task family's own (filled in by `train`).
            Saved with the run, so that an export needs no dataset.
        client_image_shape: (height, width, channels) of the images clients send to an export
            (default: the task family's native images, e.g. 105x105x3 for Omniglot).
    """

    task_family: str = "sinusoid"
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: tuple = (1, 5, 10)
    first_order: bool = False
    learn_inner_lr: Optional[str] = None
    multi_step_loss: bool = False
    multi_step_loss_weights: Optional[tuple] = None
    multi_step_loss_anneal_iterations: int = 0
    first_order_iterations: int = 0
    meta_lr_schedule: str = "constant"
    meta_lr_min: float = 1e-5
    meta_batch_size: int = 25
    meta_lr: float = 1e-3
    num_iterations: int = 70000
    num_ways: int = 1
    num_shots: int = 10
    num_queries: int = 10
    eval_num_shots: Optional[int] = 5
    eval_num_queries: Optional[int] = 100
    batch_norm: str = "transductive"
    image_size: int = 28
    image_channels: int = 3
    backbone: str = "conv4"
    conv4_downsample: str = "stride"
    conv4_filters: Optional[int] = None
    pooling: Optional[str] = None
    resnet12_widths: tuple = (64, 160, 320, 640)
    dataset: Optional[str] = None
    class_split: Optional[str] = None
    tfds_split: Optional[str] = None
    image_key: str = "image"
    label_key: str = "label"
    group_key: Optional[str] = None
    invert_images: bool = False
    rotations: int = 1
    augmentation: str = "none"
    cache_dir: Optional[str] = None
    image_cache: str = "auto"
    tfds_download: bool = False
    omniglot_protocol: str = "maml"
    eval_within_alphabet: bool = False
    omniglot_source_dir: Optional[str] = None
    data_dir: Optional[str] = None
    eval_every: int = 5000
    num_val_tasks: int = 100
    num_eval_tasks: int = 600
    checkpoint_every: int = 1000
    log_every: int = 500
    seed: int = 0
    jit_compile: bool = False
    strategy: str = "default"
    tpu: Optional[str] = None
    worker_timeout_seconds: float = 300.0
    mixed_precision: Optional[str] = None
    task_batching: str = "auto"
    recompute_inner_steps: int = 0
    task_chunk_size: int = 0
    fused_batch_norm: bool = True
    steps_per_execution: int = 1
    image_preprocessing: Optional[dict] = None
    client_image_shape: Optional[tuple] = None
    sinusoid_stream: int = 2

    def __post_init__(self):
        if isinstance(self.eval_inner_steps, int):
            object.__setattr__(self, "eval_inner_steps", (self.eval_inner_steps,))
        else:
            object.__setattr__(self, "eval_inner_steps", tuple(self.eval_inner_steps))
        if self.client_image_shape is not None:
            object.__setattr__(self, "client_image_shape", tuple(self.client_image_shape))
        if isinstance(self.resnet12_widths, list):
            object.__setattr__(self, "resnet12_widths", tuple(self.resnet12_widths))
        if isinstance(self.multi_step_loss_weights, (list, tuple)):
            object.__setattr__(self, "multi_step_loss_weights",
                               tuple(self.multi_step_loss_weights))
        self.validate()

    def validate(self):
        """Raises `ValueError` naming the field, the value and what is allowed."""
        def bad(name, allowed):
            raise ValueError(f"Invalid {name}={getattr(self, name)!r}: expected {allowed}.")

        if self.task_family not in TASK_FAMILIES:
            bad("task_family", f"one of {TASK_FAMILIES}")
        if self.batch_norm not in BATCH_NORM_MODES:
            bad("batch_norm", f"one of {BATCH_NORM_MODES}")
        if self.learn_inner_lr not in LR_MODES:
            bad("learn_inner_lr", f"one of {LR_MODES}")
        if self.omniglot_protocol not in OMNIGLOT_PROTOCOLS:
            bad("omniglot_protocol", f"one of {OMNIGLOT_PROTOCOLS}")
        for name in ("inner_steps",):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        if not self.eval_inner_steps or any(not is_int(s) or s < 0 for s in self.eval_inner_steps):
            bad("eval_inner_steps", "a non-empty list of integers >= 0")
        # Per-step settings (learned per-step rates, per-step batch norm) exist for the
        # `inner_steps` trained steps (plus batch norm's query slot); evaluation with more
        # steps reuses the last trained step's rate and slot, as MAML++ does. So
        # eval_inner_steps > inner_steps is accepted: refusing it would reject the default
        # evaluation (1, 5, 10) of every one-step per-step run, and parameters for untrained
        # steps would only hold their initial values. What cannot work is checked here, at
        # the start of a run, not in its final test: per-step rates with no trained step.
        if self.learn_inner_lr == "per_step" and self.inner_steps < 1:
            raise ValueError(
                f"Invalid learn_inner_lr='per_step' with inner_steps={self.inner_steps}: "
                "per-step rates are learned for the trained inner steps, so inner_steps must "
                "be >= 1 (or choose another learn_inner_lr).")
        for name in ("meta_batch_size", "num_iterations", "num_ways", "num_shots", "num_queries",
                     "num_val_tasks", "num_eval_tasks", "checkpoint_every", "log_every",
                     "image_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        for name in ("eval_num_shots", "eval_num_queries"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                bad(name, "an integer >= 1 or None")
        if not is_int(self.eval_every) or self.eval_every < 0:
            bad("eval_every", "an integer >= 0 (0 disables validation)")
        # inf passes a comparison and NaN fails it silently: both are refused by name.
        if not is_finite_number(self.inner_lr) or not self.inner_lr >= 0:
            bad("inner_lr", "a finite number >= 0")
        if not is_finite_number(self.meta_lr) or not self.meta_lr > 0:
            bad("meta_lr", "a finite number > 0")
        if self.classification and self.num_ways < 2:
            bad("num_ways", "an integer >= 2 for classification")
        if self.task_batching not in TASK_BATCHING_MODES:
            bad("task_batching", f"one of {TASK_BATCHING_MODES}")
        if not is_int(self.task_chunk_size) or self.task_chunk_size < 0:
            bad("task_chunk_size", "an integer >= 0 (0: all tasks in one pass)")
        if not isinstance(self.fused_batch_norm, bool):
            bad("fused_batch_norm", "True or False")
        if not is_int(self.recompute_inner_steps) or self.recompute_inner_steps < 0:
            bad("recompute_inner_steps", "an integer >= 0 (0: off; k: segments of k steps)")
        if self.sinusoid_stream not in SINUSOID_STREAMS:
            bad("sinusoid_stream", f"one of {SINUSOID_STREAMS}")
        if not is_int(self.steps_per_execution) or self.steps_per_execution < 1:
            bad("steps_per_execution", "an integer >= 1")
        if self.steps_per_execution > 1 and self.strategy != "default":
            bad("steps_per_execution", "1 with a tf.distribute strategy (one step per call)")
        if self.strategy not in STRATEGIES:
            bad("strategy", f"one of {STRATEGIES}")
        if self.tpu is not None and (not isinstance(self.tpu, str) or self.strategy != "tpu"):
            bad("tpu", "None unless strategy='tpu' (then a TPU name, 'local' or grpc:// "
                "address)")
        if not is_finite_number(self.worker_timeout_seconds) or self.worker_timeout_seconds <= 0:
            bad("worker_timeout_seconds", "a number of seconds > 0")
        if (self.strategy != "multi_worker"
                and self.worker_timeout_seconds != MAMLTrainConfig.worker_timeout_seconds):
            bad("worker_timeout_seconds", "the default unless strategy='multi_worker' (only "
                "a multi-worker run waits for other workers)")
        if self.mixed_precision not in MIXED_PRECISION_POLICIES:
            bad("mixed_precision", "None (flag: none), 'mixed_float16' or 'mixed_bfloat16'")
        self._validate_serving_inputs(bad)
        if self.task_family == "omniglot":
            self._validate_omniglot_sizes(bad, evaluation=False)
        if self.jit_compile and self.strategy not in ("default", "tpu"):
            bad("jit_compile", f"False with strategy={self.strategy!r} (XLA applies to the "
                "single-device step; a TPU compiles with XLA anyway)")
        for name in ("multi_step_loss_anneal_iterations", "first_order_iterations"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "an integer >= 0 (0: off)")
        weights = self.multi_step_loss_weights
        if weights is not None:
            if not self.multi_step_loss:
                bad("multi_step_loss_weights", "None unless multi_step_loss is on")
            if (not isinstance(weights, tuple) or len(weights) != self.inner_steps
                    or not all(is_finite_number(w) and w >= 0 for w in weights)
                    or not sum(weights) > 0):
                bad("multi_step_loss_weights", f"{self.inner_steps} finite weights >= 0 (one "
                    "per inner step), not all 0")
            if self.multi_step_loss_anneal_iterations:
                bad("multi_step_loss_weights", "None with multi_step_loss_anneal_iterations "
                    "(the annealing sets the weights)")
        if self.multi_step_loss_anneal_iterations and not self.multi_step_loss:
            bad("multi_step_loss_anneal_iterations",
                "0 unless multi_step_loss is on (it anneals the multi-step loss's weights)")
        if self.first_order_iterations and self.first_order:
            bad("first_order_iterations", "0 with first_order=True (every step is first "
                "order already)")
        if self.first_order_iterations % self.steps_per_execution:
            bad("first_order_iterations", f"a multiple of steps_per_execution="
                f"{self.steps_per_execution} (the order changes between compiled calls)")
        if not isinstance(self.eval_within_alphabet, bool):
            bad("eval_within_alphabet", "True or False")
        self._validate_images(bad)
        if self.meta_lr_schedule not in META_LR_SCHEDULES:
            bad("meta_lr_schedule", f"one of {META_LR_SCHEDULES}")
        if not is_finite_number(self.meta_lr_min) or not 0 <= self.meta_lr_min <= self.meta_lr:
            bad("meta_lr_min", f"a finite number in [0, meta_lr={self.meta_lr}]")

    def _validate_images(self, bad):
        from keras_meta.data.augmentation import AUGMENTATIONS
        from keras_meta.data.image_classes import parse_dataset_spec

        if self.backbone not in BACKBONES:
            bad("backbone", f"one of {BACKBONES}")
        if self.conv4_downsample not in CONV4_DOWNSAMPLING:
            bad("conv4_downsample", f"one of {CONV4_DOWNSAMPLING}")
        if self.conv4_filters is not None and (not is_int(self.conv4_filters)
                                               or self.conv4_filters < 1):
            bad("conv4_filters", "None or an integer >= 1")
        if self.pooling not in POOLINGS:
            bad("pooling", "None (the backbone's default), 'mean' or 'flatten'")
        widths = self.resnet12_widths
        if (not isinstance(widths, tuple) or len(widths) != 4
                or not all(is_int(w) and w >= 1 for w in widths)):
            bad("resnet12_widths", "four integers >= 1")
        if self.image_channels not in (1, 3):
            bad("image_channels", "1 or 3")
        if self.rotations not in (1, 4):
            bad("rotations", "1 or 4")
        if self.augmentation not in AUGMENTATIONS:
            bad("augmentation", f"one of {AUGMENTATIONS}")
        if self.image_cache not in IMAGE_CACHE_MODES:
            bad("image_cache", f"one of {IMAGE_CACHE_MODES}")
        for name in ("invert_images", "tfds_download"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        if self.task_family != "images" or self.dataset is None:
            # A preset may leave the dataset to the user (a folder only they have); a run
            # without one is refused by `validate_episode_sizes`, before anything loads.
            return
        try:
            parse_dataset_spec(self.dataset)
        except ValueError:
            bad("dataset", "'tfds:NAME[:CONFIG]' (a TFDS image dataset, e.g. 'tfds:cifar100') "
                "or 'folder:PATH' (a folder of class subfolders of images)")
        if self.class_split is not None:
            from keras_meta.data.class_splits import class_split

            try:
                class_split(self.class_split)
            except ValueError as error:
                raise ValueError(f"Invalid class_split={self.class_split!r}: {error}") from None
        smallest = 16 if (self.backbone == "resnet12" or self.conv4_downsample == "maxpool") else 1
        if self.image_size < smallest:
            bad("image_size", f"at least {smallest} for backbone={self.backbone!r} with "
                "four 2x2 poolings")

    def validate_episode_sizes(self):
        """`validate`, and the evaluation episodes against the data (Omniglot: 20 per class).

        `validate` leaves the evaluation sizes out: the dataclass's (5 shots, 100 queries) are
        the sinusoid protocol's, and configs that only rebuild or export an Omniglot model keep
        them. `train` calls this before anything is loaded.
        """
        self.validate()

        def bad(name, allowed):
            raise ValueError(f"Invalid {name}={getattr(self, name)!r}: expected {allowed}.")

        if self.task_family == "omniglot":
            self._validate_omniglot_sizes(bad, evaluation=True)
        if self.task_family == "images" and self.dataset is None:
            bad("dataset", "'tfds:NAME[:CONFIG]' (a prepared TFDS image dataset) or "
                "'folder:PATH' (a folder of class subfolders of images) for "
                "task_family='images'")

    def _validate_omniglot_sizes(self, bad, evaluation):
        """Episodes that the Omniglot splits can give, checked before any data is loaded."""
        splits = omniglot_split_sizes(self.omniglot_protocol)  # classes, x4 rotations
        # Training draws from "train"; validation (when the protocol has it) and test too.
        split, classes = min(splits.items(), key=lambda item: item[1])
        if self.num_ways > classes:
            bad("num_ways", f"at most {classes} for task_family='omniglot': the {split} split "
                f"of omniglot_protocol={self.omniglot_protocol!r} has {classes} classes "
                f"({classes // 4} characters x 4 rotations)")
        per_class = OMNIGLOT_IMAGES_PER_CLASS
        sizes = [("num_shots", "num_queries")]
        if evaluation:
            sizes.append(("eval_num_shots" if self.eval_num_shots is not None else "num_shots",
                          "eval_num_queries" if self.eval_num_queries is not None
                          else "num_queries"))
        for shots, queries in sizes:
            k, q = getattr(self, shots), getattr(self, queries)
            if k + q > per_class:
                bad(queries if q > k else shots,
                    f"at most {per_class} images per class in all for task_family='omniglot' "
                    f"(each character has {per_class} images, and an episode takes distinct "
                    f"ones: {shots}={k} + {queries}={q} = {k + q})")

    def _validate_serving_inputs(self, bad):
        if self.image_preprocessing is not None:
            if not self.classification:
                bad("image_preprocessing", f"None for task_family={self.task_family!r}")
            try:
                prep = ImagePreprocessing.from_config(self.image_preprocessing)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Invalid image_preprocessing={self.image_preprocessing!r}: "
                                 f"{error}") from None
            if tuple(prep.image_size) != (self.image_size, self.image_size):
                bad("image_preprocessing", f"images of {self.image_size}x{self.image_size} "
                    f"(image_size), not {tuple(prep.image_size)}")
        shape = self.client_image_shape
        if shape is not None and (len(shape) != 3 or not all(is_int(d) and d >= 1 for d in shape)
                                  or shape[-1] not in (1, 3)):
            bad("client_image_shape", "(height, width, channels) with 1 or 3 channels")

    @property
    def classification(self):
        return self.task_family != "sinusoid"

    @property
    def shots_at_eval(self):
        return self.eval_num_shots or self.num_shots

    @property
    def queries_at_eval(self):
        return self.eval_num_queries or self.num_queries

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown MAMLTrainConfig fields {unknown}; known: {sorted(known)}.")
        if "sinusoid_stream" not in values and values.get("task_family", "sinusoid") == "sinusoid":
            # Written before stream 2: that run's tasks are stream 1's.
            values = dict(values, sinusoid_stream=1)
        if "pooling" not in values and values.get("task_family") == "omniglot":
            # Written before `pooling` existed, when conv4 always flattened: the weights of
            # that run (its dense kernel) need a flattening network.
            values = dict(values, pooling="flatten")
        return cls(**values)
