"""What the benchmark scripts share: the real data sets they run on (../shared/data, read-only) and what every
script does last, the report as JSON and as Markdown, side by side."""
from __future__ import annotations

import json
from pathlib import Path

#: The shared real data (absent on machines without it: the scripts then stop with a message).
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
#: The two categories the benchmarks report on.
DATASETS = {"bottle": DATA / "mvtec_ad" / "bottle", "magnetic_tile": DATA / "magnetic_tile" / "magnetic_tile"}


def write_report(out: Path, report: dict, markdown: str, show: bool = True) -> None:
    """Write ``out``.json (the report) and ``out``.md (``markdown``); print the Markdown when ``show``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    if show:
        print(markdown)
