"""The float64 oracle lives in the package (tfm/reference.py) so that `tfm compare` can use it; tests import it here."""
from tfm.reference import Reference

__all__ = ["Reference"]
