"""The store: layout, index, import, query, export, integrity and stats.

Nothing here knows about daemons or terminals: functions return values and raise
``dicom_archive.errors.ArchiveError`` subclasses.
"""
