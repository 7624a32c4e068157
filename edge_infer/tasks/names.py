"""The task names a manifest may give (one module each in this package) and those that need labels."""

NAMES = ("classification", "detection", "regression", "anomaly", "segmentation", "raw")
LABELLED = ("classification", "detection", "segmentation")  # the manifest must list labels
