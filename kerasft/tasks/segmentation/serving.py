"""A segmenter's export signatures: images of any size in, class maps and probabilities at
each image's own size out (`serving_default` also converts to LiteRT: one size per batch,
no loop)."""

from __future__ import annotations

import tensorflow as tf

from kerasft.data import pipeline
from kerasft.models import signatures as signatures_lib
from kerasft.tasks.segmentation import graph


def signatures(model, class_names: list[str], image_size: int,
               labels_path: str) -> signatures_lib.Signatures:
  """The image signatures of a segmenter (`graph.build_segmenter`): pixels of any size
  [N, H, W, 3] (resized to the model's side), encoded images, tf.train.Examples. Out:
  "class_map" int32 [N, H, W] and "probabilities" [N, H, W, C] at each image's own size,
  padded to the batch's largest (-1 and 0 pads), with "heights" and "widths"."""
  module = signatures_lib.variables_module(model, labels_path)
  k = len(class_names)

  def segment(pixels, heights, widths):
    """Class maps of pixels at the model's side, mapped back to each image's size."""
    probabilities = tf.cast(model(pixels, training=False), tf.float32)
    top_h, top_w = tf.reduce_max(heights), tf.reduce_max(widths)

    def one(args):
      p, h, w = args
      ids, scaled = graph.at_size(p, h, w)
      return (tf.pad(ids + 1, [[0, top_h - h], [0, top_w - w]]) - 1,
              tf.pad(scaled, [[0, top_h - h], [0, top_w - w], [0, 0]]))
    ids, scaled = tf.map_fn(one, (probabilities, heights, widths), fn_output_signature=(
        tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None, k], tf.float32)))
    return {"class_map": ids, "probabilities": scaled, "heights": heights, "widths": widths}

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                              name="images")])
  def serving_default(images):
    """One size for the batch: no loop (LiteRT converts it)."""
    shape = tf.shape(images)
    probabilities = tf.cast(model(tf.image.resize(images, (image_size, image_size)),
                                  training=False), tf.float32)
    scaled = tf.image.resize(probabilities, shape[1:3])
    return {"class_map": tf.argmax(scaled, axis=-1, output_type=tf.int32),
            "probabilities": scaled, "heights": tf.fill(shape[:1], shape[1]),
            "widths": tf.fill(shape[:1], shape[2])}

  def segment_encoded(encoded):
    decoded = tf.map_fn(lambda b: (
        pipeline.decode_and_resize(b, image_size),
        tf.shape(tf.io.decode_image(b, channels=3, expand_animations=False))[:2]), encoded,
                        fn_output_signature=(tf.TensorSpec([image_size, image_size, 3],
                                                           tf.float32),
                                             tf.TensorSpec([2], tf.int32)))
    return segment(decoded[0], decoded[1][:, 0], decoded[1][:, 1])

  return signatures_lib.image_inputs(module, image_size, "[N, H, W, 3] (any size)", serving_default,
                              segment_encoded)
