"""The one place that imports audioop.

The standard module was removed in Python 3.13; the `audioop-lts` distribution installs a
module of the same name there (see the version marker in pyproject.toml). On 3.11 and 3.12
the standard module still works but warns on import.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # noqa: F401  (re-exported)

__all__ = ["audioop"]
