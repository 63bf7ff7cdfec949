"""covseg: COVID-19 lung CT lesion segmentation with U-Net and SegNet.

Label conventions (see :mod:`covseg.labels`): ``binary`` = {0 background, 1 infection};
``multiclass`` = {0 background, 1 GGO, 2 consolidation, 3 pleural effusion}.
"""
from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
