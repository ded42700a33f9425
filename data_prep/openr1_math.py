"""Convert OpenR1-Math 45k (and LUFFY benchmarks) to EasyR1-ready parquet. See --help; logic in echovl.data.openr1_math.

Run from the repository root: ``python data_prep/openr1_math.py --help``.
"""

import sys
from pathlib import Path

# use the echovl package of the repository this script belongs to (also when echovl is not installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echovl.data.openr1_math import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
