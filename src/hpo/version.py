"""The package version, in one place every part may import (the package root would pull the face in)."""

__version__ = "0.1.0"
