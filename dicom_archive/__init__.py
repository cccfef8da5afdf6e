"""dicom-archive: a local DICOM archive with a watch-folder daemon and a control CLI."""

__version__ = "0.1.0"
