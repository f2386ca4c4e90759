"""``lora-ft data``: what a config's data becomes for training, read and tokenized exactly as training does it."""
