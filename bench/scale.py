"""The documented bulk path: a large index without writing a file per instance.

Rows go through the real index code (``Index.add_instances``, the same call the
importer makes inside its group commit) in transactions of ``BATCH`` rows, with
headers from ``bench.corpus.iter_headers``, archive paths from the real layout, and
a deterministic stand-in SHA-256. Only the files are missing, so the index is the
one an import of the same corpus would produce (sizes and hashes aside). The
connection runs with ``synchronous=OFF`` while building: durability of a throwaway
benchmark index is not what is being measured.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from bench.corpus import CorpusSpec, iter_headers
from dicom_archive.archive.index import NewInstance
from dicom_archive.archive.layout import relative_instance_path
from dicom_archive.archive.store import init_archive

BATCH = 5000


def scale_spec(instances: int, seed: int = 7) -> CorpusSpec:
    """``instances`` spread as in a real archive: 2 studies a patient, 4 series of 5."""
    patients = max(1, instances // 40)
    return CorpusSpec(patients, 2, 4, 5, rows=64, columns=64, seed=seed)


def build_bulk_archive(root: Path, spec: CorpusSpec) -> int:
    archive = init_archive(root)
    index = archive.index
    connection = index.connection
    connection.execute("PRAGMA synchronous = OFF")
    file_size = 128 + 4 + 200 + 1100 + spec.pixel_bytes
    count = 0
    headers = iter_headers(spec)
    while chunk := list(itertools.islice(headers, BATCH)):
        rows = [
            NewInstance(
                header,
                relative_instance_path(header),
                file_size,
                hashlib.sha256(header.sop_instance_uid.encode()).hexdigest(),
            )
            for header in chunk
        ]
        with index.write() as db:
            index.add_instances(db, rows)
        count += len(rows)
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    archive.close()
    return count
