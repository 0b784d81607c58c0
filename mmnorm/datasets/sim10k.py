"""Sim10k (Johnson-Roberson et al., "Driving in the Matrix", ICRA 2017) for car detection, as an
mmdet dataset.

Layout (VOC): ``VOC2012/JPEGImages/*.jpg`` and ``VOC2012/Annotations/*.xml`` — 10,000 GTA-V frames
    (1914x1052)
with boxes for car, motorbike and person. The cross-domain protocol (Sim10k -> Cityscapes) uses
**car only**: other objects are dropped by mmdet's XML parser, which keeps only the classes in
``metainfo``.
"""
import os
import os.path as osp
from typing import List

from mmdet.datasets import XMLDataset
from mmdet.registry import DATASETS

__all__ = ['Sim10kDataset']


@DATASETS.register_module()
class Sim10kDataset(XMLDataset):
    """Sim10k in VOC layout, class 'car'.

    Args:
        **kwargs: See ``mmdet.datasets.XMLDataset``. ``data_prefix=dict(sub_data_root='VOC2012/')``;
            ``ann_file`` is a text file of frame names, or empty (default) to use every
            ``Annotations/*.xml`` (Sim10k has no official split; the protocol trains on all frames).
    """

    METAINFO = {'classes': ('car', ), 'palette': [(0, 0, 142)]}

    def __init__(self, ann_file: str = '', **kwargs) -> None:
        super().__init__(ann_file=ann_file, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Every annotated frame (or those of ``ann_file``), parsed by mmdet's VOC XML parser."""
        if self.ann_file and osp.isfile(self.ann_file):
            return super().load_data_list()
        if self.ann_file and not osp.isdir(self.ann_file):
            raise FileNotFoundError(f'Sim10k ann_file not found: {self.ann_file!r}')
        ann_dir = osp.join(self.sub_data_root, self.ann_subdir)
        if not osp.isdir(ann_dir):
            raise FileNotFoundError(f'Sim10k annotation folder not found: {ann_dir!r}')
        names = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith('.xml'))
        self.cat2label = {cat: i for i, cat in enumerate(self._metainfo['classes'])}
        return [
            self.parse_data_info(
                dict(
                    img_id=name,
                    file_name=osp.join(self.img_subdir, f'{name}.jpg'),
                    xml_path=osp.join(ann_dir, f'{name}.xml'))) for name in names
        ]
