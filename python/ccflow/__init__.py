"""ccflow: column-combined LSTM language models, from training to bit-exact hardware.

corpus -> model -> combine -> quantize -> generate -> simulate; each stage is a
module with a small typed interface (see README.md).
"""

__version__ = "0.1.0"
