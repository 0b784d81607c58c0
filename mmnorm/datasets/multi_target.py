"""One test run over several named target datasets (the domain-generalization protocol: one
checkpoint, Cityscapes + BDD100K + Mapillary).

:class:`MultiTargetDataset` concatenates named mmseg datasets, each with its own pipeline (so each
keeps its own test resolution), and tags every packed sample with ``dataset_name`` in its
metainfo; ``mmnorm.evaluation.MultiTargetIoUMetric`` groups the IoU by that name.
:class:`ResetOriShape` makes a test pipeline that crops or resizes its labels (RobustNet's
Mapillary protocol) evaluate at the transformed size.
"""
import bisect
from typing import Dict, List, Mapping, Union

from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmseg.registry import DATASETS, TRANSFORMS

from ..validation import ArgumentError, ArgumentTypeError

__all__ = ['MultiTargetDataset', 'ResetOriShape', 'DATASET_NAME_KEY']

# metainfo key of a packed sample naming its dataset
DATASET_NAME_KEY = 'dataset_name'


@DATASETS.register_module()
class MultiTargetDataset:
    """Named mmseg datasets read one after the other, each sample tagged with its dataset's name.

    The metainfo is the first dataset's plus ``dataset_names`` (the names, in order); every
    dataset must have the same classes. ``sample['data_samples'].dataset_name`` names the
    dataset of a sample (set after its pipeline, so pipelines need no extra ``meta_keys``).

    Args:
        datasets (Mapping[str, dict | BaseDataset]): Name -> dataset config or dataset, in the
            order to read and report them (e.g. ``dict(cityscapes=..., bdd100k=...,
            mapillary=...)``). Names become metric keys (``'cityscapes/mIoU'``): no '/' in them.
    """

    def __init__(self, datasets: Mapping[str, Union[dict, BaseDataset]]) -> None:
        if not isinstance(datasets, Mapping) or not datasets:
            raise ArgumentTypeError(
                f'datasets must be a non-empty dict of name -> dataset, got {datasets!r}')
        for name in datasets:
            if not isinstance(name, str) or not name or '/' in name:
                raise ArgumentError(
                    f'dataset names must be non-empty strings without "/", got {name!r}')
        self.names: List[str] = list(datasets)
        self.datasets = [DATASETS.build(d) if isinstance(d, dict) else d for d in datasets.values()]
        classes = [tuple(d.metainfo['classes']) for d in self.datasets]
        for name, cls in zip(self.names, classes):
            if cls != classes[0]:
                raise ArgumentError(
                    f'every dataset of MultiTargetDataset needs the classes of {self.names[0]!r} '
                    f'({len(classes[0])}), {name!r} has {len(cls)}: {cls}')
        self._metainfo = dict(self.datasets[0].metainfo, dataset_names=list(self.names))
        self._ends: List[int] = []

    @property
    def metainfo(self) -> dict:
        return dict(self._metainfo)

    def full_init(self) -> None:
        """Initialises every dataset and the index boundaries."""
        for d in self.datasets:
            d.full_init()
        self._ends = []
        total = 0
        for d in self.datasets:
            total += len(d)
            self._ends.append(total)

    def __len__(self) -> int:
        if not self._ends:
            self.full_init()
        return self._ends[-1]

    def locate(self, idx: int) -> tuple:
        """``(dataset position, index in that dataset)`` of a global index."""
        if not 0 <= idx < len(self):
            raise IndexError(f'index {idx} out of range for {len(self)} samples')
        k = bisect.bisect_right(self._ends, idx)
        return k, idx - (self._ends[k - 1] if k else 0)

    def get_data_info(self, idx: int) -> dict:
        k, i = self.locate(idx)
        return dict(self.datasets[k].get_data_info(i), **{DATASET_NAME_KEY: self.names[k]})

    def __getitem__(self, idx: int) -> Dict:
        k, i = self.locate(idx)
        data = self.datasets[k][i]
        data['data_samples'].set_metainfo({DATASET_NAME_KEY: self.names[k]})
        return data


@TRANSFORMS.register_module()
class ResetOriShape(BaseTransform):
    """Sets ``ori_shape`` to the current image size, so the segmentor returns its prediction at
    this size and the metric compares it with the labels transformed like the image.

    For test protocols that evaluate resized / cropped labels (RobustNet's Mapillary: height
    resized to 1536, 1536x1536 centre crop): put ``LoadAnnotations`` before the resize and crop,
    this transform after them. Without it mmseg resizes predictions back to the file's size.
    """

    def transform(self, results: dict) -> dict:
        results['ori_shape'] = results['img'].shape[:2]
        return results
