"""UCF-HMDB_full (TA3N, Chen et al., ICCV 2019): UCF101 <-> HMDB51 over 12 shared classes.

Published definition (cmhungsteve/TA3N, README "File lists for training/validation" and
``script_train_val.sh``): per data set a train and a val list, ``list_<dataset>_{train,val}_hmdb_ucf-feature.txt``,
one video per line ``<path> <frame count> <class index>`` where the path names the video's feature folder
(``DATA_PATH/<dataset>/RGB-feature/<video name>``) and the index is a class of ``data/classInd_hmdb_ucf.txt``.
TA3N trains on the source train list and the target train list and evaluates on the target val list, so
the val lists are this benchmark's test lists. Videos are looked up by name below ``<dataset>/RGB``
(TA3N's raw-video folder, one folder per original class); the original class folder is checked against
the class mapping in ``data/ucf_hmdb.csv``.

Names: TA3N's lists write HMDB51 names with ``&``, ``(`` and ``)`` removed (``Goal_1__2_kick_ball_f_cm_np1_fr_goo_2``
for ``kick_ball/Goal_1_&_2_kick_ball_f_cm_np1_fr_goo_2.avi``); every other character (``!``, ``#``, ``+``,
``[``, ``]``, ``-``) is kept. Checked against xuyu0010/ATCoN's ``dataset/HMDB51/raw/list_cvt/hmdb51_ucf101_{train,val}_da.txt``,
the same 1,200 HMDB51 videos under their real names: exactly the 82 whose names hold one of the three
characters are the ones TA3N's lists name differently. :func:`ta3n_name` applies the rule to both the
listed name and the file names on disk, so lists with either spelling find the real files; no two of
the 6,765 HMDB51 names of a public full list become equal under it (and two files that would are
reported as an ambiguous name). UCF101 names are written as on disk (ATCoN's ``ucf101_hmdb51_*_da.txt``:
all 2,009 are ``<Class>/v_<Class>_gXX_cYY.avi``).
"""

from __future__ import annotations

from lmft_core.datasets.core import Benchmark, DomainSpec, integer_field, register, split_fields

TA3N_DROPPED = "&()"


def ta3n_name(name: str) -> str:
    """A video name as TA3N's lists write it: ``&``, ``(`` and ``)`` removed (see the module docstring)."""
    return name.translate({ord(c): None for c in TA3N_DROPPED})


def parse_ta3n_line(text: str) -> tuple[str, str]:
    """``<path> <frame count> <class index>`` -> (path, class index)."""
    path, frames, label = split_fields(text, ("path", "frame count", "class index"))
    integer_field(frames, "frame count")
    return path, label


def _domain(name: str, title: str) -> DomainSpec:
    return DomainSpec(
        name=name,
        title=title,
        video_dir=f"{name}/RGB",
        split_files={"train": f"{name}/list_{name}_train_hmdb_ucf-feature.txt", "test": f"{name}/list_{name}_val_hmdb_ucf-feature.txt"},
        class_folders=True,
    )


BENCHMARK = register(Benchmark(
    name="ucf_hmdb",
    title="UCF-HMDB_full: UCF101 <-> HMDB51, 12 shared classes",
    citation="Chen et al., Temporal Attentive Alignment for Large-Scale Video Domain Adaptation, ICCV 2019 (cmhungsteve/TA3N)",
    domains=(_domain("ucf101", "UCF101 (15 of its classes)"), _domain("hmdb51", "HMDB51 (12 of its classes)")),
    line_format="<path> <frame count> <class index 0-11>  (TA3N list files; videos found by name)",
    parse_line=parse_ta3n_line,
    name_key=ta3n_name,
    name_rule="names compared with &, ( and ) removed, as TA3N's lists write them",
))
