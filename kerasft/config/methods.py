"""Fine-tuning methods that keep what the backbone knows and cost less: their settings.

    --average=greedy_soup   average the top-k epochs of the last phase (`averaging`)
    --wise_ft=auto          interpolate head-phase and fine-tuned weights (`averaging`)
    --l2sp=0.01             decay toward the pretrained weights (`kerasft.training.optimizers`)
    --peft=lora             train only LoRA factors / biases / norms (`peft`)
    --recipe=few_shot       contrastive tuning of a text encoder on pairs (`few_shot`)
    --unlabeled_dir=DIR     self-training on pseudo-labelled unlabelled examples
                            (`self_training`)
    --teacher=saved_models/NAME   distillation from an export's outputs
                            (`kerasft.workflows.distill`)

`MethodsConfig` declares each switch once (flags and `config.json` come from it);
`kerasft.config.checks` refuses the combinations a run cannot honour, before anything is
read. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from kerasft.core.errors import UsageError
from kerasft.core.settings import check, check_choices, positive_int, setting

AVERAGES = ("best", "greedy_soup", "uniform_soup", "ema")
WISE_FT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # what --wise_ft=auto tries


@dataclasses.dataclass(frozen=True)
class MethodsConfig:
  """Weight averaging, WiSE-FT, L2-SP, parameter-efficient tuning and few-shot text."""
  average: str = setting(
      "best", "What the last phase keeps: best (its best epoch), greedy_soup (the best "
      "epoch, plus each of the other top --average_top_k epochs whose addition to the "
      "average does not lower the validation metric), uniform_soup (the mean of the top-k "
      "epochs) or ema (Keras' exponential moving average of the weights). A soup or the EMA "
      "is kept only when at least as good on validation as the best epoch.", choices=AVERAGES)
  average_top_k: int = setting(3, "--average soups: how many of the last phase's best epochs "
                               "are kept (in <model_dir>/top_k/) and averaged.")
  ema_momentum: float = setting(0.99, "--average=ema: the moving average's momentum per step.")
  wise_ft: str = setting(
      "", "WiSE-FT after the fine-tune phase: ALPHA in [0, 1] interpolates (1 - ALPHA) * "
      "head-phase weights + ALPHA * fine-tuned weights; auto picks ALPHA from 0, 0.25, 0.5, "
      "0.75, 1 on validation and plots wise_ft.png [off].")
  l2sp: float = setting(0.0, "L2-SP: penalty LAMBDA * sum((w - w_pretrained)^2) on the "
                        "unfrozen backbone weights instead of decay toward zero [0: off].")
  peft: str = setting(
      "none", "Parameter-efficient fine-tuning of the unfrozen part: lora (Keras' "
      "enable_lora on --lora_targets; merged into the kernels on export), bitfit (biases "
      "only) or normfit (normalization layers only).",
      choices=("none", "lora", "bitfit", "normfit"))
  lora_rank: int = setting(8, "--peft=lora: the rank of the LoRA factors.")
  lora_alpha: Optional[float] = setting(None, "--peft=lora: the factors' scale is "
                                        "alpha / rank [alpha = rank].")
  lora_targets: tuple[str, ...] = setting(
      (), "--peft=lora: name patterns (fnmatch) of the unfrozen layers that get LoRA "
      "[attention query and value projections, and pointwise (1x1) convolutions].")
  save_adapter: bool = setting(False, "--peft=lora: also write <model_dir>/adapter.npz, the "
                               "LoRA factors and the head (apply it with kerasft.export "
                               "--adapter).")
  recipe: str = setting(
      "default", "default: the task's default (a frozen backbone and its convex head; "
      "--task=tagging fine-tunes its encoder: README, defaults per task); frozen: a frozen "
      "backbone for every task; few_shot (text models): SetFit-style contrastive tuning of "
      "the encoder on pairs of labelled texts, then the usual head; auto: settings chosen "
      "from the data set's size and image size (README: the --recipe=auto rule), for those "
      "left at their defaults.", choices=("default", "frozen", "few_shot", "auto"))
  pairs_per_example: int = setting(20, "--recipe=few_shot: sampled pairs per labelled text "
                                   "(half of the same class, half of another).")
  few_shot_epochs: int = setting(1, "--recipe=few_shot: epochs over the pairs.")
  few_shot_learning_rate: float = setting(1e-4, "--recipe=few_shot: Adam's rate for the "
                                          "encoder on the pairs.")
  self_training_rounds: int = setting(1, "--unlabeled_*: rounds of self-training (the model "
                                      "labels the unlabelled examples, a student trains on "
                                      "the labelled and the confident ones).")
  pseudo_label_threshold: float = setting(0.8, "--unlabeled_*: the smallest top-class "
                                          "probability that makes a pseudo-label.")
  pseudo_labels_per_class: int = setting(0, "--unlabeled_*: at most this many pseudo-labels "
                                         "per class, the most confident [0: no cap].")
  teacher: str = setting(
      "", "Distillation: an export (saved_models/NAME or saved_models/NAME/N) of a kerasft "
      "classifier (--task=multiclass or multilabel) with the data's classes; the run trains "
      "on --distill_weight x its outputs at --distill_temperature + the rest x the labels, "
      "and on the --unlabeled_* examples with its outputs alone.")
  distill_temperature: float = setting(2.0, "--teacher: T of the teacher's softened outputs "
                                       "(softmax(log(p) / T); T > 1 flattens them).")
  distill_weight: float = setting(0.5, "--teacher: the share of the teacher's outputs in "
                                  "each labelled example's target, in [0, 1].")

  def __post_init__(self):
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    check_choices(self)
    positive_int(self.average_top_k, "average_top_k")
    check(isinstance(self.ema_momentum, (int, float)) and 0 < self.ema_momentum < 1,
          "ema_momentum", "must be between 0 and 1 (exclusive)", self.ema_momentum)
    if self.wise_ft and self.wise_ft != "auto":
      alpha = wise_ft_alpha(self.wise_ft)
      check(alpha is not None and 0 <= alpha <= 1, "wise_ft",
            "must be a number in [0, 1] or auto", self.wise_ft)
    check(isinstance(self.l2sp, (int, float)) and self.l2sp >= 0, "l2sp", "must be >= 0",
          self.l2sp)
    positive_int(self.lora_rank, "lora_rank")
    if self.lora_alpha is not None:
      check(isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0, "lora_alpha",
            "must be a positive number", self.lora_alpha)
    positive_int(self.pairs_per_example, "pairs_per_example")
    positive_int(self.self_training_rounds, "self_training_rounds")
    check(isinstance(self.pseudo_label_threshold, (int, float))
          and 0 <= self.pseudo_label_threshold < 1, "pseudo_label_threshold",
          "must be in [0, 1)", self.pseudo_label_threshold)
    check(isinstance(self.pseudo_labels_per_class, int) and self.pseudo_labels_per_class >= 0,
          "pseudo_labels_per_class", "must be >= 0 (0: no cap)", self.pseudo_labels_per_class)
    positive_int(self.few_shot_epochs, "few_shot_epochs")
    check(isinstance(self.few_shot_learning_rate, (int, float))
          and self.few_shot_learning_rate > 0, "few_shot_learning_rate",
          "must be a positive number", self.few_shot_learning_rate)
    check(isinstance(self.distill_temperature, (int, float)) and self.distill_temperature > 0,
          "distill_temperature", "must be a positive number", self.distill_temperature)
    check(isinstance(self.distill_weight, (int, float)) and 0 <= self.distill_weight <= 1,
          "distill_weight", "must be in [0, 1]", self.distill_weight)
    if not self.teacher:
      for name in ("distill_temperature", "distill_weight"):
        if getattr(self, name) != DEFAULTS[name]:
          raise UsageError(f"--{name}: only goes with --teacher")
    if self.recipe != "few_shot":
      for name in ("pairs_per_example", "few_shot_epochs", "few_shot_learning_rate"):
        if getattr(self, name) != DEFAULTS[name]:
          raise UsageError(f"--{name}: only goes with --recipe=few_shot")
    if self.peft != "lora":
      for name in ("lora_alpha", "lora_targets", "save_adapter"):
        if getattr(self, name):
          raise UsageError(f"--{name}: only goes with --peft=lora")
      if self.lora_rank != 8:
        raise UsageError("--lora_rank: only goes with --peft=lora")
    if self.peft != "none" and self.l2sp:
      raise UsageError(f"--l2sp: pulls the unfrozen backbone weights toward their pretrained "
                       f"values, which --peft={self.peft} keeps frozen; pass one of them")


DEFAULTS = {"pairs_per_example": 20, "few_shot_epochs": 1, "few_shot_learning_rate": 1e-4,
             "self_training_rounds": 1, "pseudo_label_threshold": 0.8,
             "pseudo_labels_per_class": 0, "distill_temperature": 2.0, "distill_weight": 0.5}


def wise_ft_alpha(value: str) -> Optional[float]:
  """The number in a --wise_ft value ("0.5"), None for "auto" or what is not a number."""
  try:
    return float(value)
  except ValueError:
    return None
