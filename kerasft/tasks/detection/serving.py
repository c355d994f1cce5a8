"""A detector's export signatures, named as the TF Object Detection API names its outputs
(so its clients work): images of any size in; `detection_boxes` [N, K, 4] (ymin, xmin,
ymax, xmax as fractions of each image as given), `detection_scores` [N, K],
`detection_classes` [N, K] (1-based class ids, float32; 0 on padding),
`detection_class_names` [N, K] ("" on padding), `num_detections` [N] (float32), plus each
image's `heights` and `widths` in pixels."""

from __future__ import annotations

import tensorflow as tf

from kerasft.data import pipeline
from kerasft.models import signatures as signatures_lib
from kerasft.tasks.detection import graph


def signatures(model, class_names: list[str], image_size: int, labels_path: str,
               settings) -> signatures_lib.Signatures:
  """The image signatures of a detector (`graph.build_detector`); `settings`: the
  `DetectionSettings` (boxes kept, score and IoU thresholds) the export applies."""
  module = signatures_lib.variables_module(model, labels_path)
  names = tf.constant(class_names)

  def detections(pixels, heights, widths):
    """The outputs of pixels at the model's side, for images of `heights` x `widths`."""
    found = graph.detect(model(pixels, training=False), image_size, settings.max_detections,
                         settings.score_threshold, settings.iou_threshold)
    kept = tf.sequence_mask(found["count"], settings.max_detections)
    return {"detection_boxes": found["boxes"] * tf.cast(kept, tf.float32)[..., None],
            "detection_scores": found["scores"] * tf.cast(kept, tf.float32),
            "detection_classes": tf.where(kept, tf.cast(found["classes"] + 1, tf.float32), 0.0),
            "detection_class_names": tf.where(kept, tf.gather(names, found["classes"]), ""),
            "num_detections": tf.cast(found["count"], tf.float32),
            "heights": heights, "widths": widths}

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                              name="images")])
  def serving_default(images):
    shape = tf.shape(images)
    return detections(tf.image.resize(images, (image_size, image_size)),
                      tf.fill(shape[:1], shape[1]), tf.fill(shape[:1], shape[2]))

  def from_encoded(encoded):
    pixels, sides = tf.map_fn(lambda b: (
        pipeline.decode_and_resize(b, image_size),
        tf.shape(tf.io.decode_image(b, channels=3, expand_animations=False))[:2]), encoded,
                              fn_output_signature=(tf.TensorSpec([image_size, image_size, 3],
                                                                 tf.float32),
                                                   tf.TensorSpec([2], tf.int32)))
    return detections(pixels, sides[:, 0], sides[:, 1])

  return signatures_lib.image_inputs(module, image_size, "[N, H, W, 3] (any size)",
                                     serving_default, from_encoded)
