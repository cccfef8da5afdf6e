"""The archive on the DICOM network: C-ECHO, C-STORE into the one importer, C-FIND
from the index. Built on ``archive/``; the daemon and the CLI run it."""
