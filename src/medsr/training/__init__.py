"""Making a model: the Trainer (the loop in plain sight), its recipe, losses, GAN-collapse detection.

config.py   TrainConfig (a recipe), load_config (YAML + --set), data-path expansion
trainer.py  the Trainer: one step, validation, checkpoints, the loop
losses.py   pixel, adversarial and perceptual losses
collapse.py detection of a collapsing GAN run (NaN, flat output, a winning discriminator)
"""
