"""--task=segmentation's settings: the decoder, and how masks are named and found."""

from __future__ import annotations

import dataclasses

from kerasft.core.settings import check_choices, setting


@dataclasses.dataclass(frozen=True)
class SegmentationSettings:
  """The decoder a segmenter puts on the backbone's multi-scale maps."""
  FOR = "only for --task=segmentation"  # what a message says the group is for

  decoder: str = setting(
      "deeplabv3plus", "--task=segmentation: the decoder on the backbone's multi-scale maps: "
      "deeplabv3plus (atrous pyramid on the 1/16 maps joined with the 1/4 ones) or fpn (a "
      "feature pyramid over 1/4..1/32).", choices=("deeplabv3plus", "fpn"))

  def __post_init__(self):
    check_choices(self)


@dataclasses.dataclass(frozen=True)
class SegmentationData:
  """How masks are read beside their images."""
  FOR = "only for --task=segmentation"

  mask_classes: str = setting("", "--task=segmentation: a file naming the mask values' "
                              "classes, line i naming value i [the values, 0..K-1]; 255 "
                              "is ignored.")
  mask_column: str = setting("mask", "--task=segmentation with --csv: the column of mask "
                             "paths.")

  SOURCES = ()
  PATHS = ("mask_classes",)
