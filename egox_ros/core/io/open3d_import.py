"""Import open3d on machines without the system libusb it links against.

The open3d wheels link ``libusb-1.0.so.0`` (for Azure Kinect support), which minimal Debian/Ubuntu images lack. The
``libusb-package`` wheel ships that library; loading it first lets the dynamic loader resolve open3d's dependency by
its soname. Nothing is loaded when the system already has libusb.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
from pathlib import Path


def import_open3d():
    """The open3d module; raises ImportError with the install hint when it cannot be loaded."""
    if ctypes.util.find_library("usb-1.0") is None:
        spec = importlib.util.find_spec("libusb_package")
        if spec is not None and spec.origin is not None:
            for lib in sorted(Path(spec.origin).parent.glob("libusb-1.0*.so*")):
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                break
    try:
        import open3d
    except ImportError as e:
        raise ImportError(f"open3d could not be loaded ({e}); install it with `pip install open3d-cpu libusb-package` "
                          "(scripts/setup.sh does)") from e
    return open3d
