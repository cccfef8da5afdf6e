"""The watch-folder daemon, built on ``dicom_archive.archive``."""
