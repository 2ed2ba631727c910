"""Self-supervised training of image and text encoders, exported as serving artifacts."""
