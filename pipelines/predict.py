"""Label new videos with an adapted model (tau_hat inside): Ray Data batch prediction.

    python pipelines/predict.py --model models:/lmft@best --manifest new_videos.csv --output predictions/
    python pipelines/predict.py --model models:/lmft@best --folder /data/new_videos --output predictions/
    ray job submit --working-dir . -- python pipelines/predict.py --model models:/lmft@best --folder /shared/new --output /shared/pred

``--model`` is any MLflow model reference of a model lmft training logged (``models:/<name>@<alias>``,
``models:/<name>/<version>``, ``models:/m-...``); the tracking store is ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else the embedded store of ``--workdir``. The model brings its clip geometry,
energy variant and classes. Writes ``<output>/predictions.parquet`` (or ``.csv``: ``--set
predict.output_format=csv``), ``rejects.csv`` and ``summary.json``; with ``--pictures`` also a picture per video of
the tokens the model kept over its frames (``<output>/pictures/``). A warning is printed (and kept in the summary)
when every prediction is one class.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lmft_core.cli import load, parser
from lmft_core.config import INTERRUPTED, INTERRUPTED_EXIT, ConfigError
from lmft_core.manifest import ManifestError


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)  # --profile: its [predict] and [preprocess] decode settings
    p.add_argument("--model", required=True, help="MLflow model reference, e.g. models:/lmft@best")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="CSV with a path column (an lmft manifest works)")
    src.add_argument("--folder", type=Path, help="a folder of videos (searched recursively)")
    p.add_argument("--domain", help="only manifest rows of this domain")
    p.add_argument("--split", help="only manifest rows of this split")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the embedded store)")
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="where the embedded MLflow store is")
    p.add_argument("--pictures", action="store_true",
                   help="also write a picture per video: energy heat, kept tokens, prediction (= --set predict.pictures=true)")
    args = p.parse_args(argv)
    if args.pictures:
        args.overrides.append("predict.pictures=true")
    import signal

    from lmft_core import interrupt

    handler_before = signal.getsignal(signal.SIGINT)
    interrupt.clear()
    interrupt.install()
    try:
        profile = load(args)
        from lmft_core.model_store import resolve  # after --help: torch, Ray and MLflow load only for work
        from lmft_core.predict import read_inputs, run_predict
        from lmft_core.tracking import check_tracking_server

        uri = args.tracking_uri or profile.tracking.resolve_uri(args.workdir)
        check_tracking_server(uri)
        model = resolve(args.model, uri)  # a missing model or alias fails here, before any work
        inputs = read_inputs(args.manifest, args.folder, args.domain, args.split)
        summary = run_predict(model, uri, inputs, args.output, profile.predict, profile.preprocess)
        interrupt.check()  # a Ctrl-C that library code swallowed (lmft_core.interrupt)
    except (ConfigError, ManifestError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        interrupt.clear()
        interrupt.restore(handler_before)
    acc = "" if summary.accuracy is None else f", accuracy {summary.accuracy:.3f} on {summary.labelled} labelled"
    print(f"[lmft] {summary.predicted} of {summary.videos_in} videos labelled ({summary.rejected} rejected{acc}) "
          f"with {summary.model}\n[lmft] predictions: {summary.predictions}\n[lmft] rejects: {summary.rejects}")
    if summary.pictures:
        print(f"[lmft] pictures: {summary.pictures} ({summary.pictures_made} made, {summary.pictures_skipped} videos "
              "without one: rejected)")
    for warning in summary.warnings:
        print(f"[lmft] WARNING: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
