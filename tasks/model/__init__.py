"""The model: builders, augmentation, inference, TensorFlow's CPU settings, the promotion gate."""
