"""The HTTP face: DICOMweb, the study browser page and Prometheus metrics."""
