"""Daily-DA (Xu et al., TAMAN; lists shipped with ATCoN, ECCV 2022): 8 daily actions, 4 domains.

Published definition (xuyu0010/ATCoN, ``dataset/README.md`` and ``data/iterator_factory.py``): per domain
``<Domain>/raw/data/`` holds the videos and ``<Domain>/raw/list_cvt/`` the train and test lists, one
video per line ``<video index>\\t<label>\\t<path below raw/data>`` (``data/video_iterator.py`` splits on
whitespace). The label indexes the 8 classes of ``data/daily_da.csv``; the class folders of the paths
are checked against its folder rows. Any two different domains make a direction. The lists write the
videos' real file names (HMDB51's keep ``!``, ``#``, ``(`` and ``)``; the ARID, MIT and Kinetics lists use
none of these), so paths are matched as written, with no name rule.
"""

from __future__ import annotations

from lmft_core.datasets.core import Benchmark, DomainSpec, integer_field, register, split_fields


def parse_daily_da_line(text: str) -> tuple[str, str]:
    """``<video index> <label> <path>`` -> (path, label)."""
    index, label, path = split_fields(text, ("video index", "label", "path"))
    integer_field(index, "video index")
    return path, label


def _domain(name: str, folder: str, list_prefix: str, title: str, class_folders: bool = True) -> DomainSpec:
    lists = f"{folder}/raw/list_cvt/{list_prefix}_msda"
    return DomainSpec(name, title, f"{folder}/raw/data", {"train": f"{lists}_train.txt", "test": f"{lists}_test.txt"}, class_folders)


BENCHMARK = register(Benchmark(
    name="daily_da",
    title="Daily-DA: drink, jump, pick, pour, push, run, walk, wave over ARID, HMDB51, Moments-in-Time, Kinetics",
    citation="Xu et al., Multi-Source Video Domain Adaptation with Temporal Attentive Moment Alignment; Xu et al., ATCoN, ECCV 2022 (xuyu0010/ATCoN)",
    domains=(
        _domain("arid", "ARID", "arid", "ARID (dark videos)"),
        _domain("hmdb51", "HMDB51", "hmdb51", "HMDB51"),
        _domain("mit", "MIT", "mit", "Moments-in-Time"),
        _domain("kinetics", "Kinetics", "kinetics_daily", "Kinetics-600 (test videos carry no class folder)", class_folders=False),
    ),
    line_format="<video index>\\t<label 0-7>\\t<path below <Domain>/raw/data>",
    parse_line=parse_daily_da_line,
    name_key=None,
))
