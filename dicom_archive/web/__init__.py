"""The HTTP face of the archive: DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS and
WADO-URI), rendered frames and thumbnails, the study browser page and Prometheus
metrics, served by Starlette from the index and the archived files."""
