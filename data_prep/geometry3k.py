"""Convert Geometry3K to EasyR1-ready parquet (train/validation/test). See --help; logic in echovl.data.geometry3k.

Run from the repository root: ``python data_prep/geometry3k.py --help``.
"""

import sys
from pathlib import Path

# use the echovl package of the repository this script belongs to (also when echovl is not installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echovl.data.geometry3k import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
