import os.path as osp

from setuptools import find_packages, setup


def read_version():
    ns = {}
    with open(osp.join(osp.dirname(__file__), 'mmnorm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


# mmseg 1.2.2 imports ftfy and regex in mmseg.utils without declaring them.
SEG = ['mmsegmentation>=1.2.0,<1.3.0', 'ftfy', 'regex']
DET = ['mmdet>=3.3.0,<3.4.0']

setup(
    name='mmnorm',
    version=read_version(),
    description='Normalization-based domain adaptation and generalization '
    'layers (AdaBN, IBN, RN, PBN) for mmsegmentation and mmdetection',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    # mmnorm_tools: the helpers of the tools/ scripts (launcher, config checks, benchmark timing,
    # ...), installed beside the library so that every tool imports it without touching sys.path.
    packages=find_packages(exclude=('configs', 'tools', 'tools.*', 'tests', 'docs')) +
    ['mmnorm_tools'],
    package_dir={'mmnorm_tools': 'tools/mmnorm_tools'},
    python_requires='>=3.8',
    # The core (norm layers, hooks, recalibration) needs mmengine + mmcv; each toolbox's datasets,
    # backbones and UDA wrappers register when that toolbox is installed: pip install mmnorm[seg],
    # mmnorm[det] or mmnorm[all].
    install_requires=[
        'mmengine>=0.10.0,<1.0.0',
        'mmcv>=2.0.0,<2.2.0',
    ],
    extras_require={
        'seg': SEG,
        'det': DET,
        'all': SEG + DET,
    },
    license='Apache License 2.0',
    zip_safe=False,
)
