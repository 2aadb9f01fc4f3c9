"""Score aggregators on many objects, paired against the single-view baselines; on one CPU or many GPUs.

>>> import tempfile, trellis_mv.eval as ev
>>> out = tempfile.mkdtemp()
>>> res = ev.evaluate(out=out, dataset="proxy", objects=2, views=[1], seeds=1, progress=False,
...                   params={"sparse_structure": {"steps": 2}, "texture": {"steps": 2}})
>>> res["jobs"], "summary.csv" in res["report"]   # multidiffusion and the single view, on each object
(4, True)
"""

from trellis_mv.eval._datasets import (
    VIEW_SETS,
    Dataset,
    EvalObject,
    FolderDataset,
    ProxyDataset,
    parse_dataset,
    write_example_folder,
)
from trellis_mv.eval._jobs import Job, Placement, derive_seed, placement, read_results
from trellis_mv.eval._metrics import image_scores, lower_is_better, score_mesh
from trellis_mv.eval._report import write_report
from trellis_mv.eval._run import Generation, evaluate
from trellis_mv.eval._stats import Paired, mean_ci, paired, paired_bootstrap_ci, wilcoxon_p
from trellis_mv.eval._voxel_metrics import (
    HELD_OUT_VIEWS,
    NEAREST_VOXEL,
    chamfer,
    color_error,
    fscore,
    iou,
    posterior_draws,
    reference_iou,
    score_voxels,
)

__all__ = [
    "HELD_OUT_VIEWS", "NEAREST_VOXEL", "VIEW_SETS", "Dataset", "EvalObject", "FolderDataset", "Generation", "Job",
    "Paired", "Placement", "ProxyDataset", "chamfer", "color_error", "derive_seed", "evaluate", "fscore",
    "image_scores", "iou", "lower_is_better", "mean_ci", "paired", "paired_bootstrap_ci", "parse_dataset",
    "placement", "posterior_draws", "read_results", "reference_iou", "score_mesh", "score_voxels", "wilcoxon_p",
    "write_example_folder", "write_report",
]
