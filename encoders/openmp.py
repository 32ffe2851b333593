"""Import before torch: its OpenMP threads then wait passively between operations unless the user said otherwise.

By default they spin. The indexer's decode workers always share the cores with the encoder, and there the
spinning takes their CPU: the encoder needs markedly more CPU per picture (BENCHMARKS.md, "Indexing", OpenMP
passive waiting). The trainer keeps OpenMP's default: on an idle machine spinning makes its steps faster, and
only loses beside other work (BENCHMARKS.md, "Figures behind choices in the code", training, the wait policy).
libgomp reads OMP_WAIT_POLICY once, when torch loads it, so a value set after that is ignored.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
