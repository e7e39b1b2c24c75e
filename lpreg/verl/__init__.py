"""verl as lpreg's engine for many GPUs and nodes: ``python -m lpreg.run backend=verl ...`` (docs/verl.md).

Nothing here imports verl at import time: ``import lpreg`` and ``import lpreg.verl`` work without the ``verl``
extra. The modules that need verl import it themselves.
"""
