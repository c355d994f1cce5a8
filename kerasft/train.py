"""Fine-tune a backbone on labelled images and export it for TF Serving.

  python -m kerasft.train --model=mobilenet --data_dir=flowers/ --image_size=128
  python -m kerasft.train --flagfile=flags/fashion_mnist_small.cfg
  python -m kerasft.train            # the built-in recipe (scikit-learn's digits)
  python -m kerasft.train --list_models
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from kerasft import backbones, config, errors  # noqa: E402

_M, _D, _T, _R = config.ModelConfig, config.DataConfig, config.TrainingConfig, config.RunConfig

flags.DEFINE_bool("list_models", False, "Print the --model names with their input size and exit.")
flags.DEFINE_bool("list_blocks", False, "Print the blocks of --model (for --unfreeze_blocks) "
                  "and exit.")
flags.DEFINE_string("model", _M.model,
                    "The backbone: a Keras Applications name (--list_models), hub:HANDLE (a TF "
                    "Hub handle, URL or folder), savedmodel:PATH, keras:PATH (a .keras file), "
                    "or keras_hub:PRESET_OR_FOLDER (a text encoder: BERT, RoBERTa, ...).")
flags.DEFINE_string("weights", _M.weights,
                    "'imagenet' (Keras' cache, $KERAS_HOME/models), 'none', or a weights file.")
flags.DEFINE_integer("image_size", _M.image_size, "Input side in pixels [the backbone's own].")
flags.DEFINE_list("head", list(_M.head), "Hidden Dense sizes of the head, e.g. 512,256 [none].")
flags.DEFINE_float("dropout", _M.dropout, "Dropout rate before each head layer.")
flags.DEFINE_integer("unfreeze_top", _M.unfreeze_top,
                     "Fine-tune phase: unfreeze the top N backbone layers with weights "
                     "(BatchNorm not counted).")
flags.DEFINE_integer("unfreeze_blocks", _M.unfreeze_blocks,
                     "Fine-tune phase: unfreeze the top K blocks (--list_blocks).")
flags.DEFINE_string("unfreeze_from", _M.unfreeze_from,
                    "Fine-tune phase: unfreeze every layer from this one to the top.")
flags.DEFINE_integer("gradual_unfreeze", _M.gradual_unfreeze,
                     "Fine-tune phase: unfreeze K more blocks at the start of each epoch.")
flags.DEFINE_enum("bn_mode", _M.bn_mode, config.BN_MODES,
                  "Unfrozen BatchNorm layers: frozen (all weights fixed, inference mode), "
                  "affine (train gamma and beta, keep the statistics), train (everything, in "
                  "training mode).")
flags.DEFINE_string("signature", _M.signature,
                    "hub:/savedmodel: the signature to call [__call__, else serving_default].")
flags.DEFINE_string("output_key", _M.output_key,
                    "hub:/savedmodel: the output to use when the function returns a dict.")
flags.DEFINE_enum("hub_input_range", _M.hub_input_range, ("0,1", "-1,1", "0,255"),
                  "hub:/savedmodel: the pixel range the module expects.")
flags.DEFINE_string("backbone_layer", _M.backbone_layer,
                    "keras: the last layer kept as the backbone [the one before the output].")
flags.DEFINE_string("data_dir", _D.data_dir,
                    "Folder with one sub-folder per class, or train/ and validation/ (val/) "
                    "split folders [the built-in digits recipe].")
flags.DEFINE_string("val_dir", _D.val_dir, "Validation folder with the same class sub-folders.")
flags.DEFINE_string("csv", _D.csv, "A .csv/.tsv of image paths (--path_column, relative to "
                    "its folder) and labels (--label_column): a class, a|b for multilabel, "
                    "numbers for regression.")
flags.DEFINE_string("val_csv", _D.val_csv, "Validation rows, like --csv.")
flags.DEFINE_string("path_column", _D.path_column, "--csv: the column of image paths.")
flags.DEFINE_string("label_column", _D.label_column,
                    "--csv: the label column (regression: target columns, comma-separated).")
flags.DEFINE_string("tfrecord", _D.tfrecord, "A glob of TFRecord files of tf.train.Examples "
                    "(--image_key, --label_key).")
flags.DEFINE_string("val_tfrecord", _D.val_tfrecord, "Validation TFRecord files, like --tfrecord.")
flags.DEFINE_string("label_names", _D.label_names,
                    "--tfrecord: a file of class names, line i naming label id i [the ids].")
flags.DEFINE_string("image_key", _D.image_key, "--tfrecord/--tfds: the image feature "
                    "[image/encoded; for TFDS its Image feature].")
flags.DEFINE_string("label_key", _D.label_key, "--tfrecord/--tfds: the label feature "
                    "[image/class/label; for TFDS its ClassLabel feature].")
flags.DEFINE_string("tfds", _D.tfds, "A prepared TFDS data set, NAME or NAME:CONFIG (read with "
                    "download=False; prepare it with `tfds build NAME`).")
flags.DEFINE_string("tfds_data_dir", _D.tfds_data_dir, "Where TFDS data sets are prepared "
                    "[~/tensorflow_datasets].")
flags.DEFINE_string("train_split", _D.train_split, "--tfds: the training split, e.g. "
                    "train[:80%].")
flags.DEFINE_string("val_split", _D.val_split, "--tfds: the validation split [validation if "
                    "the data set has one, else --validation_split of the training split].")
flags.DEFINE_string("cache_dir", _D.cache_dir, "Cache decoded images in files here [in memory "
                    "when they fit].")
flags.DEFINE_float("mixup", _D.mixup, "MixUp on training batches with Beta(alpha, alpha) "
                   "[0: off].")
flags.DEFINE_float("cutmix", _D.cutmix, "CutMix on training batches with Beta(alpha, alpha) "
                   "[0: off]; with --mixup, each batch uses one of them.")
flags.DEFINE_bool("oversample", _D.oversample,
                  "Repeat images of smaller classes up to the largest class's count.")
flags.DEFINE_string("text_dir", _D.text_dir, "Text models: a folder with one sub-folder of "
                    ".txt files per class.")
flags.DEFINE_string("text_column", _D.text_column, "Text models with --csv (.csv, .tsv, "
                    ".jsonl): the column of texts.")
flags.DEFINE_string("text_key", _D.text_key, "Text models with --tfds: the text feature [its "
                    "first Text feature].")
flags.DEFINE_integer("max_length", _M.max_length, "Text models: tokens per text [0: the 99th "
                     "percentile of the training texts, rounded up to 8, at most the model's "
                     "limit].")
flags.DEFINE_enum("pooling", _M.pooling, ("mean", "cls"), "Text models: the mean of the "
                  "token vectors or the first ([CLS]) token's.")
flags.DEFINE_enum("task", _M.task, config.TASKS, "multiclass (softmax), multilabel (sigmoid per "
                  "label, binary cross-entropy) or regression (--csv numeric targets, MSE).")
flags.DEFINE_float("threshold", _M.threshold, "multilabel: the score at which the export's "
                   "`labels` output names a label.")
flags.DEFINE_float("validation_split", _D.validation_split,
                   "Stratified share of --data_dir held out for validation when there is "
                   "no validation folder.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size.")
flags.DEFINE_enum("resize", _D.resize, ("squash", "crop", "pad"),
                  "How images become squares, in training and in the export's serving_bytes.")
flags.DEFINE_list("augment", list(_D.augment),
                  "Training-only augmentation, any of flip,rotate,zoom,contrast,translate "
                  "(never in the export; turns feature caching off).")
flags.DEFINE_float("augment_strength", _D.augment_strength,
                   "How strong each augmentation is (fraction of a turn / size / contrast).")
flags.DEFINE_bool("strict_data", _D.strict_data,
                  "Stop on unreadable images instead of skipping them with a warning.")
flags.DEFINE_enum("class_weight", _D.class_weight, ("none", "balanced"),
                  "balanced: weight each class's loss by n / (classes * its count).")
flags.DEFINE_enum("optimizer", _T.optimizer, config.OPTIMIZERS, "The optimizer.")
flags.DEFINE_float("learning_rate", _T.learning_rate, "Learning rate of the head phase.")
flags.DEFINE_integer("epochs", _T.epochs, "Epochs of the head phase (frozen backbone).")
flags.DEFINE_integer("fine_tune_epochs", _T.fine_tune_epochs,
                     "Epochs of the fine-tune phase after the head phase (needs --unfreeze_top).")
flags.DEFINE_float("fine_tune_learning_rate", _T.fine_tune_learning_rate,
                   "Learning rate of the fine-tune phase [a tenth of --learning_rate].")
flags.DEFINE_float("label_smoothing", _T.label_smoothing, "Label smoothing of the loss.")
flags.DEFINE_enum("lr_schedule", _T.lr_schedule, config.LR_SCHEDULES,
                  "Learning rate over each phase: constant or cosine decay to 0.")
flags.DEFINE_float("warmup_epochs", _T.warmup_epochs,
                   "Linear warmup from 0 at the start of each phase, in epochs.")
flags.DEFINE_float("weight_decay", _T.weight_decay,
                   "Decoupled weight decay for adamw [0.004]; L2 on kernels for adam and sgd "
                   "[0]. Only trainable weights (head, unfrozen layers) are affected.")
flags.DEFINE_float("layer_lr_decay", _T.layer_lr_decay,
                   "Fine-tune phase: each backbone block learns at this factor of the block "
                   "above it (the top block at this factor of the head's rate).")
flags.DEFINE_integer("seed", _T.seed, "Seed for the split, shuffling and initialization.")
flags.DEFINE_enum("strategy", _T.strategy, config.STRATEGIES,
                  "tf.distribute strategy; auto: mirrored with more than one GPU, else the "
                  "default. --batch_size is the global batch.")
flags.DEFINE_integer("cpu_replicas", _T.cpu_replicas,
                     "Split the CPU into N logical devices (to run --strategy=mirrored "
                     "without GPUs).")
flags.DEFINE_enum("cluster_resolver", _T.cluster_resolver, ("tf_config", "slurm"),
                  "multi_worker: where the cluster comes from (TF_CONFIG or Slurm).")
flags.DEFINE_enum("mixed_precision", _T.mixed_precision, config.MIXED_PRECISION,
                  "auto: mixed_bfloat16 on GPUs that support it, off on CPU. The output layer "
                  "and the export stay float32.")
flags.DEFINE_enum("jit_compile", _T.jit_compile, config.ON_OFF_AUTO,
                  "XLA; auto: on with GPUs, off on CPU (7-12x slower for MobileNets here).")
flags.DEFINE_integer("steps_per_execution", _T.steps_per_execution,
                     "Training steps per tf.function call.")
flags.DEFINE_integer("early_stopping_patience", _T.early_stopping_patience,
                     "Stop a phase after N epochs without a better val_accuracy (multilabel: val_auc, "
                     "regression: val_loss) [0: off].")
flags.DEFINE_integer("reduce_lr_patience", _T.reduce_lr_patience,
                     "Halve the rate after N epochs without a lower val_loss [0: off].")
flags.DEFINE_bool("deterministic", _T.deterministic,
                  "Seeds plus tf.config.experimental.enable_op_determinism(): two runs give "
                  "bit-identical weights on CPU.")
flags.DEFINE_enum("cache_features", _T.cache_features, config.CACHE_MODES,
                  "Compute the frozen backbone's features once and train the head on them "
                  "(auto/on: when the backbone is frozen and nothing augments its input).")
flags.DEFINE_integer("feature_cache_memory", _T.feature_cache_memory,
                     "MiB of cached features kept in memory; more go to --feature_cache_dir "
                     "[0: a quarter of the RAM].")
flags.DEFINE_string("feature_cache_dir", _T.feature_cache_dir,
                    "Where features that do not fit in memory go [<model_dir>/feature_cache].")
flags.DEFINE_enum("feature_cache_dtype", _T.feature_cache_dtype, ("float32", "float16"),
                  "How cached features are stored.")
flags.DEFINE_string("name", _R.name, "The model's name [the backbone's].")
flags.DEFINE_string("model_dir", _R.model_dir, "The run's folder [runs/<name>].")
flags.DEFINE_string("export_dir", _R.export_dir,
                    "TF Serving folder; each run adds a version [saved_models/<name>].")
flags.DEFINE_bool("overwrite", _R.overwrite, "Replace a finished run in --model_dir.")
FLAGS = flags.FLAGS


def _int_list(values, flag):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise errors.UsageError(f"--{flag}: expected comma-separated integers, got "
                            f"{','.join(values)!r}") from None


def config_from_flags() -> config.RunConfig:
  """Turns the flags into a validated RunConfig."""
  return config.RunConfig(
      model=config.ModelConfig(model=FLAGS.model, weights=FLAGS.weights,
                               image_size=FLAGS.image_size,
                               head=_int_list(FLAGS.head, "head"), dropout=FLAGS.dropout,
                               unfreeze_top=FLAGS.unfreeze_top,
                               unfreeze_blocks=FLAGS.unfreeze_blocks,
                               unfreeze_from=FLAGS.unfreeze_from,
                               gradual_unfreeze=FLAGS.gradual_unfreeze, bn_mode=FLAGS.bn_mode,
                               signature=FLAGS.signature, output_key=FLAGS.output_key,
                               hub_input_range=FLAGS.hub_input_range,
                               backbone_layer=FLAGS.backbone_layer, task=FLAGS.task,
                               threshold=FLAGS.threshold, max_length=FLAGS.max_length,
                               pooling=FLAGS.pooling),
      data=config.DataConfig(data_dir=FLAGS.data_dir, val_dir=FLAGS.val_dir, csv=FLAGS.csv,
                             val_csv=FLAGS.val_csv, path_column=FLAGS.path_column,
                             label_column=FLAGS.label_column, tfrecord=FLAGS.tfrecord,
                             val_tfrecord=FLAGS.val_tfrecord, label_names=FLAGS.label_names,
                             image_key=FLAGS.image_key, label_key=FLAGS.label_key,
                             tfds=FLAGS.tfds, tfds_data_dir=FLAGS.tfds_data_dir,
                             train_split=FLAGS.train_split, val_split=FLAGS.val_split,
                             cache_dir=FLAGS.cache_dir, mixup=FLAGS.mixup, cutmix=FLAGS.cutmix,
                             oversample=FLAGS.oversample, text_dir=FLAGS.text_dir,
                             text_column=FLAGS.text_column, text_key=FLAGS.text_key,
                             validation_split=FLAGS.validation_split,
                             batch_size=FLAGS.batch_size, strict_data=FLAGS.strict_data,
                             class_weight=FLAGS.class_weight, resize=FLAGS.resize,
                             augment=tuple(FLAGS.augment),
                             augment_strength=FLAGS.augment_strength),
      training=config.TrainingConfig(
          optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate, epochs=FLAGS.epochs,
          fine_tune_epochs=FLAGS.fine_tune_epochs,
          fine_tune_learning_rate=FLAGS.fine_tune_learning_rate,
          label_smoothing=FLAGS.label_smoothing, seed=FLAGS.seed,
          lr_schedule=FLAGS.lr_schedule, warmup_epochs=FLAGS.warmup_epochs,
          weight_decay=FLAGS.weight_decay, layer_lr_decay=FLAGS.layer_lr_decay,
          early_stopping_patience=FLAGS.early_stopping_patience,
          reduce_lr_patience=FLAGS.reduce_lr_patience, deterministic=FLAGS.deterministic,
          strategy=FLAGS.strategy, cpu_replicas=FLAGS.cpu_replicas,
          cluster_resolver=FLAGS.cluster_resolver, mixed_precision=FLAGS.mixed_precision,
          jit_compile=FLAGS.jit_compile, steps_per_execution=FLAGS.steps_per_execution,
          cache_features=FLAGS.cache_features, feature_cache_memory=FLAGS.feature_cache_memory,
          feature_cache_dir=FLAGS.feature_cache_dir,
          feature_cache_dtype=FLAGS.feature_cache_dtype),
      name=FLAGS.name, model_dir=FLAGS.model_dir, export_dir=FLAGS.export_dir,
      overwrite=FLAGS.overwrite)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  if FLAGS.list_models:
    print(f"{'model':<22} default input size")
    for name, entry in backbones.MODELS.items():
      print(f"{name:<22} {entry.default_size}")
    return
  run_config = config_from_flags()
  if FLAGS.list_blocks:
    m = run_config.model
    if run_config.is_text:
      from kerasft import text  # pylint: disable=g-import-not-at-top
      encoder = text.load(backbones.source(m.model)[1]).model
    else:
      encoder = backbones.build(m.model, "none" if m.weights == "imagenet" else m.weights,
                                m.image_size, m.signature, m.output_key, m.hub_input_range,
                                m.backbone_layer).model
    for name, layers in backbones.blocks(encoder):
      print(f"{name:<28} {len(layers):>3} layers: {', '.join(l.name for l in layers)}")
    return
  from kerasft.run import train_classifier  # pylint: disable=g-import-not-at-top
  result = train_classifier(run_config)
  if result.export_path:  # not on multi-worker workers other than the chief
    from kerasft import reports  # pylint: disable=g-import-not-at-top
    print(f"validation {reports.headline(result.metrics)}; run in "
          f"{result.config.model_dir}; exported to {result.export_path}")


if __name__ == "__main__":
  errors.run_app(main)
