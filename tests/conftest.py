"""Test-wide settings: no test reaches the network, TensorFlow stays quiet."""

import os

os.environ.setdefault("MEXT_OFFLINE", "1")  # tensorflow-datasets: never try to download
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
