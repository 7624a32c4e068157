"""edge-convert: TensorFlow/Keras model → quantized TFLite bundle, with an honest accuracy report."""
