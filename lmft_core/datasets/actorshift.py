"""ActorShift (Zhang et al., "Audio-Adaptive Activity Recognition Across Video Domains", CVPR 2022).

Human actors (Kinetics-700) as the source domain, animal actors (YouTube) as the target, 7 classes.
No official list files could be read (the authors' repository, xiaobai1217/DomainAdaptation, holds
none); the format here is the one of the only public ActorShift loader found: annotation CSV files
without a header, one video per line ``<path>,<class name>`` (e.g. ``kinetics/abc.mp4,drinking``), the
videos below ``<root>/videos_processed`` with the listed file name (that loader swaps the suffix for
``.avi``; here any video suffix is found by name). Which CSV holds which domain and split is not
published, so all split files are given on the command line; only human -> animal is a direction.
"""

from __future__ import annotations

from lmft_core.datasets.core import Benchmark, DomainSpec, register, same_name, split_fields


def parse_actorshift_line(text: str) -> tuple[str, str]:
    """``<path>,<class name>`` -> (path, class name)."""
    path, label = split_fields(text, ("path", "class"), sep=",")
    return path, label


BENCHMARK = register(Benchmark(
    name="actorshift",
    title="ActorShift: human (Kinetics-700) -> animal (YouTube) actors, 7 classes",
    citation="Zhang et al., Audio-Adaptive Activity Recognition Across Video Domains, CVPR 2022",
    domains=(
        DomainSpec("human", "human actors, Kinetics-700", "videos_processed", {"train": None, "test": None}, class_folders=False),
        DomainSpec("animal", "animal actors, YouTube", "videos_processed", {"train": None, "test": None}, class_folders=False),
    ),
    line_format="<path>,<class name>  (CSV, no header; videos found by name)",
    parse_line=parse_actorshift_line,
    name_key=same_name,
    name_rule="file names compared without their suffix",
    directions=(("human", "animal"),),
))
