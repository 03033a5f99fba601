"""ccflow: column-combined LSTM language models, from training to bit-exact hardware.

corpus -> model -> combine -> quantize -> generate -> simulate; each stage is a
module with a small typed interface (see README.md).
"""

import os

# numpy's OpenBLAS: the golden model's matrix products are small and latency-bound;
# its worker threads only add synchronisation, 10-50x slower on a busy 2-core machine.
# (Set before numpy loads; torch's own thread pool is not affected.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
