"""Dataset converters to EasyR1-ready parquet (run them through ``data_prep/*.py``).

- :mod:`echovl.data.geometry3k`: Geometry3K (original release, hub-layout parquet or hub name) to
  ``train/validation/test.parquet`` with ``problem`` / ``answer`` / ``images`` / ``id`` / ``choices``.
- :mod:`echovl.data.openr1_math`: OpenR1-Math 45k (LUFFY's set, or the raw 220k with LUFFY's filter) to
  ``train.parquet`` with ``problem`` / ``answer`` / ``solution``, and LUFFY's benchmarks to per-source eval files.
- :mod:`echovl.data.common`: bad-row reports, atomic deterministic parquet output, streaming readers.

Heavy dependencies (``datasets``, ``transformers``, PIL) are imported only when a conversion needs them.
"""

from .common import BadRow, DataError, ParquetOutputs, Report

__all__ = ["ParquetOutputs", "BadRow", "DataError", "Report"]
