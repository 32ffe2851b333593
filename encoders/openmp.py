"""Import before torch: its OpenMP threads then wait passively between operations unless the user said otherwise.

By default they spin. Where anything else wants the cores (the indexer's decode workers, a data loader, another
program on a laptop), the spinning takes their CPU and the model runs several times slower; on an idle machine
passive waiting costs next to nothing (BENCHMARKS.md, "Indexing", OpenMP passive waiting, and "Training", the
wait policy). libgomp reads OMP_WAIT_POLICY once, when torch loads it, so a value set after that is ignored.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
