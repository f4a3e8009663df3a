"""skullstrip: fast brain extraction for head scans of any modality, on a CPU.

>>> import skullstrip
>>> result = skullstrip.strip("t1.nii.gz")  # doctest: +SKIP
>>> result.mask_image().to_filename("mask.nii.gz")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from skullstrip.infer import Result, StripOptions, strip  # noqa: E402

__all__ = ["Result", "StripOptions", "strip", "__version__"]
