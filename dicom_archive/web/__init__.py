"""The DICOMweb face of the archive (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI
over HTTP, served by Starlette from the index and the archived files."""
