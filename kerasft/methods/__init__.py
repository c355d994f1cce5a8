"""Fine-tuning methods that keep what the backbone knows and cost less.

    --average=greedy_soup   average the top-k epochs of the last phase (`averaging`)
    --wise_ft=auto          interpolate head-phase and fine-tuned weights (`averaging`)
    --l2sp=0.01             decay toward the pretrained weights (`kerasft.training.optimizers`)
    --peft=lora             train only LoRA factors / biases / norms (`peft`)
    --recipe=few_shot       contrastive tuning of a text encoder on pairs (`few_shot`)
    --recipe=auto           settings chosen from the data (`auto`)
    --unlabeled_dir=DIR     self-training on pseudo-labelled unlabelled examples
                            (`self_training`)

Their settings are `kerasft.config.methods.MethodsConfig`.
"""
