"""Shape World benchmark (Lego vs Textual Inversion); same flags as ``lego-studio shapeworld benchmark``.

    python benchmarks/shapeworld_benchmark.py --out bench/            # default run, ~45 min on 2 CPU cores
    python benchmarks/shapeworld_benchmark.py --quick --out /tmp/q    # smoke run, < 1 min
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld.benchmark_cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
