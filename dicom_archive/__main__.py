import sys

from dicom_archive.cli import main

sys.exit(main())
