"""The TensorFlow side of object detection: a one-stage detector in RetinaNet's shape.

    images [N, S, S, 3] (0..255) -> the backbone cut at strides 8/16/32 (C3..C5, through
    identity layers `features_<stride>`: a frozen backbone's maps are what the feature
    cache stores) -> a feature pyramid P3..P7 -> shared class and box subnets ->
    [N, anchors, 4 + classes]: each anchor's box offsets, then its class logits.

Anchors are 3 scales x 3 aspect ratios per pyramid cell, centred on the cell ((i + 0.5) x
stride: KerasHub's AnchorGenerator starts its centres at 0), matched to boxes by IoU
(>= 0.5 positive, < 0.4 background, between: ignored; each box keeps its best anchor),
crowd regions ignored. The loss is the sigmoid focal loss over the anchors that are not
ignored plus a Huber loss on the positives' offsets, both divided by the positives. Boxes
are decoded and suppressed per class in the graph (`detect`: TensorFlow's
combined_non_max_suppression, as the Object Detection API's post-processing does;
KerasHub's NonMaxSuppression is class-agnostic), the same in evaluation and the export.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerasft.core import _compat
from kerasft.core.errors import UsageError
from kerasft.data import pipeline
from kerasft.data.pipeline import decode_and_resize
from kerasft.models.backbones import strided_layers
from kerasft.models.features import TAPS
from kerasft.models.heads import Preprocess

LEVELS = (3, 4, 5, 6, 7)  # P3..P7: strides 8..128
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SIZE = 4.0  # an anchor's side: this x the level's stride (x its scale)
VARIANCE = (0.1, 0.1, 0.2, 0.2)  # box offsets are divided by these (the usual encoding)
POSITIVE, NEGATIVE = 0.5, 0.4  # IoU thresholds of matching
WIDTH, DEPTH = 96, 2  # the pyramid's and the subnets' channels, the subnets' layers
PRIOR = 0.01  # the class logits' initial probability (RetinaNet's prior)
BACKGROUND, IGNORED = -1, -2


def anchors(image_size: int) -> np.ndarray:
  """float32 [A, 4] anchor boxes (xmin, ymin, xmax, ymax in pixels) of a square input, level
  by level (P3..P7), cell by cell (row-major), then scale x ratio."""
  out = []
  for level in LEVELS:
    stride = 2 ** level
    cells = -(-image_size // stride)
    centres = (np.arange(cells) + 0.5) * stride
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    shapes = np.asarray([(ANCHOR_SIZE * stride * s / np.sqrt(r),  # (width, height), r = h/w
                           ANCHOR_SIZE * stride * s * np.sqrt(r))
                          for s in SCALES for r in RATIOS], np.float32)
    centre = np.stack([cx.ravel(), cy.ravel()], -1)[:, None, :]
    half = shapes[None] / 2
    out.append(np.concatenate([centre - half, centre + half], -1).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def iou(a, b):
  """IoU [Na, Nb] of xyxy boxes a [Na, 4] and b [Nb, 4] (tf.Tensors)."""
  lt = tf.maximum(a[:, None, :2], b[None, :, :2])
  rb = tf.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), -1)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
  return inter / tf.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def match(anchor_boxes, boxes, crowd):
  """(the index into `boxes` of each anchor's match [A], its state [A]: 1 positive, -1
  background, -2 ignored) by IoU with the boxes that are not crowd regions; every box keeps
  its best anchor; anchors mostly inside a crowd region are ignored."""
  real = tf.where(tf.logical_not(crowd))[:, 0]
  overlap = iou(anchor_boxes, tf.gather(boxes, real))  # [A, n]
  n = tf.shape(overlap)[1]
  padded = tf.pad(overlap, [[0, 0], [0, 1]], constant_values=-1.0)  # column n: no box
  best, column = tf.reduce_max(padded, 1), tf.argmax(padded, 1, output_type=tf.int32)
  state = tf.where(best >= POSITIVE, 1, tf.where(best < NEGATIVE, BACKGROUND, IGNORED))
  forced = tf.argmax(overlap, 0, output_type=tf.int32)  # each box's best anchor
  state = tf.tensor_scatter_nd_update(state, forced[:, None], tf.ones_like(forced))
  column = tf.tensor_scatter_nd_update(column, forced[:, None], tf.range(n))
  in_crowd = _inside_fraction(anchor_boxes, tf.boolean_mask(boxes, crowd))
  state = tf.where((state != 1) & (in_crowd > 0.5), IGNORED, state)
  return tf.gather(tf.concat([real, tf.zeros([1], tf.int64)], 0), column), state


def _inside_fraction(a, regions):
  """The largest share [A] of each anchor inside one of the `regions` (0 without any)."""
  lt = tf.maximum(a[:, None, :2], regions[None, :, :2])
  rb = tf.minimum(a[:, None, 2:], regions[None, :, 2:])
  inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), -1)
  area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  return tf.reduce_max(tf.pad(inter / area[:, None], [[0, 0], [0, 1]]), 1)


def encode(anchor_boxes, boxes, classes, crowd):
  """Training targets [A, 5] of one image: each anchor's box offsets (to its matched box,
  divided by `VARIANCE`) and its class (>= 0), background (-1) or ignored (-2)."""
  index, state = match(anchor_boxes, boxes, crowd)
  matched = tf.gather(tf.concat([boxes, tf.zeros([1, 4])], 0), index)
  offsets = _offsets(anchor_boxes, matched)
  target = tf.where(state == 1, tf.gather(tf.concat([classes, tf.zeros([1], tf.int32)], 0),
                                          index), state)
  return tf.concat([offsets, tf.cast(target, tf.float32)[:, None]], -1)


def _centre_size(b):
  return (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], \
      b[..., 3] - b[..., 1]


def _offsets(a, b):
  ax, ay, aw, ah = _centre_size(a)
  bx, by, bw, bh = _centre_size(b)
  return tf.stack([(bx - ax) / aw, (by - ay) / ah, tf.math.log(tf.maximum(bw, 1e-3) / aw),
                   tf.math.log(tf.maximum(bh, 1e-3) / ah)], -1) / VARIANCE


def decode(anchor_boxes, offsets):
  """Boxes [..., A, 4] (xyxy pixels) of predicted `offsets` [..., A, 4]."""
  ax, ay, aw, ah = _centre_size(tf.cast(anchor_boxes, tf.float32))
  d = tf.cast(offsets, tf.float32) * VARIANCE
  cx, cy = d[..., 0] * aw + ax, d[..., 1] * ah + ay
  w = tf.exp(tf.minimum(d[..., 2], 4.0)) * aw
  h = tf.exp(tf.minimum(d[..., 3], 4.0)) * ah
  return tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def detect(raw, image_size: int, max_detections: int, score_threshold: float,
           iou_threshold: float) -> dict:
  """The detections of the model's output `raw` [N, A, 4 + C]: {"boxes" [N, K, 4] (ymin,
  xmin, ymax, xmax, normalized to the input), "scores" [N, K], "classes" [N, K] (0-based,
  int32), "count" [N]}, K = max_detections, suppressed per class."""
  raw = tf.cast(raw, tf.float32)
  boxes = decode(tf.constant(anchors(image_size)), raw[..., :4]) / image_size
  boxes = tf.clip_by_value(tf.gather(boxes, [1, 0, 3, 2], axis=-1), 0.0, 1.0)
  scores = tf.sigmoid(raw[..., 4:])
  nms = tf.image.combined_non_max_suppression(
      boxes[:, :, None, :], scores, max_output_size_per_class=max_detections,
      max_total_size=max_detections, iou_threshold=iou_threshold,
      score_threshold=score_threshold, clip_boxes=False)
  return {"boxes": nms.nmsed_boxes, "scores": nms.nmsed_scores,
          "classes": tf.cast(nms.nmsed_classes, tf.int32), "count": nms.valid_detections}


@keras.saving.register_keras_serializable(package="kerasft")
class DetectionLoss(keras.losses.Loss):
  """The sigmoid focal loss (alpha 0.25, gamma 2) of the class logits over the anchors that
  are not ignored, plus `box_weight` x the Huber loss of the positives' offsets, each
  summed over the batch and divided by its positives (at least 1). Targets [B, A, 5]."""

  def __init__(self, box_weight: float = 1.0, name: str = "detection_loss", **kwargs):
    kwargs.pop("reduction", None)
    super().__init__(name=name, reduction="sum", **kwargs)
    self.box_weight = box_weight
    self.focal = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True,
        reduction="none")

  def call(self, y_true, y_pred):
    y_pred = tf.cast(y_pred, tf.float32)
    target = tf.cast(y_true[..., 4], tf.int32)
    n_classes = tf.shape(y_pred)[-1] - 4
    positive = tf.cast(target >= 0, tf.float32)
    kept = tf.cast(target != IGNORED, tf.float32)
    onehot = tf.one_hot(tf.maximum(target, 0), n_classes) * positive[..., None]
    focal = self.focal(onehot[..., None], y_pred[..., 4:, None])  # [B, A, C]
    boxes = keras.losses.Huber(delta=1.0, reduction="none")(
        y_true[..., :4, None], y_pred[..., :4, None])  # [B, A, 4]
    positives = tf.maximum(tf.reduce_sum(positive), 1.0)
    return (tf.reduce_sum(focal * kept[..., None])
            + self.box_weight * tf.reduce_sum(boxes * positive[..., None])) / positives

  def get_config(self):
    return {**super().get_config(), "box_weight": self.box_weight}


def encoder(backbone) -> tuple[keras.Model, dict[int, str]]:
  """(the backbone's maps at strides 8, 16 and 32, {stride: the layer tapped}); a
  UsageError when they cannot be reached (a hub or SavedModel module) or the side is not a
  multiple of 32."""
  size, model = backbone.image_size, backbone.model
  if size % 32:
    raise UsageError(f"--image_size: --task=detection needs a side divisible by 32, got {size}")
  found = strided_layers(model, size, (8, 16, 32))
  if len(found) < 3:
    raise UsageError(f"--model: {backbone.name} gives no maps at strides 8, 16 and 32 (found "
                     f"1/{', 1/'.join(map(str, sorted(found))) or 'none'}); --task=detection "
                     "needs a Keras Applications or keras:PATH backbone whose layers reach "
                     "them (hub: and savedmodel: modules give only their outputs)")
  return (keras.Model(model.input, [found[s].output for s in (8, 16, 32)],
                      name=f"{model.name}_encoder"), {s: found[s].name for s in (8, 16, 32)})


def _conv(x, filters: int, name: str, strides: int = 1):
  return keras.layers.SeparableConv2D(filters, 3, strides=strides, padding="same",
                                      name=name)(x)


def pyramid(c3, c4, c5) -> list:
  """P3..P7 [N, S/8 .. S/128, S/8 .., WIDTH]: 1x1 laterals, a top-down pathway (nearest
  upsampling, added), a 3x3 separable convolution per level; P6 from C5 at stride 2, P7
  from P6 (RetinaNet's)."""
  levels, top = {}, None
  for level, c in ((5, c5), (4, c4), (3, c3)):
    x = keras.layers.Conv2D(WIDTH, 1, name=f"fpn_lateral_{level}")(c)
    if top is not None:
      up = keras.layers.Resizing(*x.shape[1:3], interpolation="nearest",
                                 name=f"fpn_up_{level}")(top)
      x = keras.layers.Add(name=f"fpn_add_{level}")([x, up])
    top = x
    levels[level] = _conv(x, WIDTH, f"fpn_p{level}")
  levels[6] = _conv(c5, WIDTH, "fpn_p6", strides=2)
  levels[7] = _conv(keras.layers.ReLU(name="fpn_p6_relu")(levels[6]), WIDTH, "fpn_p7",
                    strides=2)
  return [levels[level] for level in LEVELS]


def _subnet(outputs_per_anchor: int, name: str, bias: float = 0.0) -> list:
  """The layers of a head shared by every level, applied in order: DEPTH separable
  convolutions with ReLU, then a separable one that gives `outputs_per_anchor` per anchor
  (float32).
  Layers, not a nested model: the backbone stays the detector's one nested model."""
  layers = []
  for i in range(DEPTH):
    layers += [keras.layers.SeparableConv2D(WIDTH, 3, padding="same", name=f"{name}_conv{i}"),
               keras.layers.ReLU(name=f"{name}_relu{i}")]
  return layers + [keras.layers.SeparableConv2D(  # 8x cheaper than a full 3x3 on a CPU
      len(SCALES) * len(RATIOS) * outputs_per_anchor, 3, padding="same", dtype="float32",
      bias_initializer=keras.initializers.Constant(bias), name=f"{name}_out")]


def _apply(layers: list, x):
  for layer in layers:
    x = layer(x)
  return x


def build_detector(backbone, n_classes: int, output, dropout: float = 0.0
                   ) -> tuple[keras.Model, dict[int, str]]:
  """(the detector: raw pixels [N, S, S, 3] -> [N, anchors, 4 + n_classes], {stride: the
  layer tapped}). The encoder runs in inference mode (BatchNorm statistics fixed)."""
  enc, taps = encoder(backbone)
  size = backbone.image_size
  inputs = keras.Input((size, size, 3), dtype="float32", name="images")
  x = Preprocess(backbone.preprocess, name="preprocess")(inputs)
  _compat.pin_inference_mode(enc)
  maps = [keras.layers.Identity(name=f"{TAPS}{s}")(m)
          for s, m in zip(taps, enc(x, training=False))]
  if dropout:
    maps = [keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(m)
            for i, m in enumerate(maps)]
  classes = _subnet(n_classes, "class_subnet", -np.log((1 - PRIOR) / PRIOR))
  boxes = _subnet(4, "box_subnet")
  outputs = []
  for level, p in zip(LEVELS, pyramid(*maps)):
    per = [keras.layers.Reshape((-1, k), name=f"{name}_{level}")(_apply(net, p))
           for net, k, name in ((boxes, 4, "boxes"), (classes, n_classes, "classes"))]
    outputs.append(keras.layers.Concatenate(name=f"anchors_{level}")(per))
  out = output.last_layer(outputs, n_classes)
  return keras.Model(inputs, out, name=f"{backbone.name}_detector"), taps


def _ragged(files, size: int):
  """(boxes [N, None, 4] float32 at the model's side, classes [N, None] int32, crowd [N,
  None] bool) of `files`' `Boxed` labels, as ragged tensors."""
  labels = list(files.labels)
  lengths = [len(b.classes) for b in labels]
  scale = lambda b: b.boxes * np.float32([size / b.width, size / b.height] * 2)  # noqa: E731
  values = [np.concatenate([f(b) for b in labels] or [empty]).astype(dtype)
            for f, empty, dtype in ((scale, np.zeros((0, 4)), np.float32),
                                    (lambda b: b.classes, np.zeros(0), np.int32),
                                    (lambda b: b.crowd, np.zeros(0), bool))]
  return tuple(tf.RaggedTensor.from_row_lengths(v, lengths) for v in values)


def move_boxes(boxes, classes, crowd, w, size: int):
  """The boxes [n, 4] (xyxy at the model's side) where `kerasft.data.pipeline.warp` moves
  the image with `w`, clipped to it; boxes left under 2 pixels wide or high are dropped
  (with their classes and crowd flags)."""
  boxes = tf.where(w.flip, tf.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0],
                                     boxes[:, 3]], -1), boxes)
  if w.moves:
    scale = tf.cast(w.side, tf.float32) / size
    shift = tf.cast(tf.stack([w.at - w.offset[1], w.at - w.offset[0]] * 2), tf.float32)
    boxes = tf.clip_by_value(boxes * scale + shift, 0.0, float(size))
  kept = tf.reduce_all(boxes[:, 2:] - boxes[:, :2] >= 2.0, -1)
  return (tf.boolean_mask(boxes, kept), tf.boolean_mask(classes, kept),
          tf.boolean_mask(crowd, kept))


def augment(image, boxes, classes, crowd, seed, names: tuple, strength: float):
  """One image and its boxes transformed together (`kerasft.data.pipeline.random_warp`
  from `seed` [2]): flip, zoom and translate move both, contrast changes the image only."""
  size = image.shape[0]
  w = pipeline.random_warp(seed, size, names, strength)
  image = pipeline.warp(image, w)
  if "contrast" in names:
    image = pipeline.contrast(image, w)
  image.set_shape((size, size, 3))
  return (image, *move_boxes(boxes, classes, crowd, w, size))


def batches(files, size: int, batch_size: int, shuffle: bool = False, seed: int = 0,
            augment_with: tuple = (), strength: float = 0.1, cache: bool = True):
  """Batched (float32 pixels [B, S, S, 3], targets [B, A, 5] (`encode`)) of detection
  `files` (inputs: image paths or bytes; labels: `Boxed`), squashed to S, decoded in
  parallel, cached in memory when `cache`, reshuffled every epoch with `shuffle`, each image
  augmented with its boxes by `augment_with` (seeded per epoch and example)."""
  encoded = bool(files.inputs) and isinstance(files.inputs[0], bytes)
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(files.inputs, tf.string),
                                           *_ragged(files, size)))
  ds = ds.map(lambda image, *labels: (decode_and_resize(
      image if encoded else tf.io.read_file(image), size), *labels),
              num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    ds = ds.cache()
  if shuffle:
    ds = ds.shuffle(max(len(files.inputs), 1), seed=seed, reshuffle_each_iteration=True)
  if augment_with:
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda example, s: augment(*example, s, augment_with, strength),
        num_parallel_calls=tf.data.AUTOTUNE)
  anchor_boxes = tf.constant(anchors(size))
  ds = ds.map(lambda image, *labels: (image, encode(anchor_boxes, *labels)),
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def targets(files, size: int) -> np.ndarray:
  """float32 [N, A, 5] training targets of `files` (`encode`), in order."""
  anchor_boxes = tf.constant(anchors(size))
  ds = tf.data.Dataset.from_tensor_slices(_ragged(files, size)).map(
      lambda *labels: encode(anchor_boxes, *labels), num_parallel_calls=tf.data.AUTOTUNE)
  parts = list(ds.batch(256).as_numpy_iterator())
  return np.concatenate(parts) if parts else np.zeros((0, len(anchors(size)), 5), np.float32)


def detections(net, inputs, sizes: list, image_size: int, settings) -> list:
  """[(boxes [k, 4] xyxy in each image's own pixels, scores [k], classes [k])] of `net`'s
  outputs on the batches `inputs` ((x, _) pairs); `sizes`: each image's (width, height);
  `settings`: a `DetectionSettings`."""
  out = []
  for x, _ in inputs:
    found = detect(net(x, training=False), image_size, settings.max_detections,
                   settings.score_threshold, settings.iou_threshold)
    found = {k: v.numpy() for k, v in found.items()}
    for i in range(len(found["count"])):
      width, height = sizes[len(out)]
      k = int(found["count"][i])
      yxyx = found["boxes"][i, :k] * np.float32([height, width, height, width])
      out.append((yxyx[:, [1, 0, 3, 2]], found["scores"][i, :k],
                  found["classes"][i, :k]))
  return out


class MeanAP(keras.callbacks.Callback):
  """Puts `val_map`, COCO's AP of the validation images, in each epoch's logs, from the
  fitted model's outputs on `val` (batches of what it takes: images, or cached pyramid
  inputs) and the boxes of `val_files`; `settings`: `DetectionSettings`; `coco`: the
  metrics of (truth, detections, class names) (`report.coco`)."""

  def __init__(self, val, val_files, image_size: int, settings, coco):
    super().__init__()
    self.val, self.files, self.image_size, self.settings, self.coco = (
        val, val_files, image_size, settings, coco)

  def on_epoch_end(self, epoch, logs=None):
    truth = list(self.files.labels)
    found = detections(self.model, self.val, [(b.width, b.height) for b in truth],
                       self.image_size, self.settings)
    if logs is not None:
      logs["val_map"] = max(self.coco(truth, found, self.files.class_names)["map"], 0.0)
