"""edge-infer: offline TFLite inference on small devices, with a quality gate and durable MQTT delivery."""

__version__ = "0.1.0"
