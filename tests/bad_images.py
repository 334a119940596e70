"""Hostile image files for tests/test_data_checks.py and tests/test_serve.py; never part of
the package."""
import struct
import zlib

import cv2
import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I',
                                                                    zlib.crc32(kind + data))


def png_bomb(path, width: int = 12000, height: int = 12000) -> int:
    """A valid grey PNG of ``width x height`` black pixels, compressed about 1000x (12000 x
    12000: 140 KB on disk, 144 million pixels, 432 MB as the BGR image a reader decodes);
    returns the file size."""
    comp = zlib.compressobj(9)
    rows = bytes(1 + width) * 1000                   # filter byte 0 + a row of zeros, x1000
    idat = b''.join([comp.compress(rows) for _ in range(height // 1000)]
                    + [comp.compress(bytes(1 + width) * (height % 1000)), comp.flush()])
    data = (b'\x89PNG\r\n\x1a\n'
            + _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + _chunk(b'IDAT', idat) + _chunk(b'IEND', b''))
    with open(path, 'wb') as f:
        f.write(data)
    return len(data)


def truncated_jpeg(path, shape=(32, 32, 3), keep: float = 0.6, seed: int = 0) -> bytes:
    """A valid JPEG of random pixels cut to its first ``keep`` fraction (header intact, the
    end of its scan and its end marker missing); returns the whole file's bytes."""
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode('.jpg', rng.integers(0, 256, shape, np.uint8))
    assert ok
    data = data.tobytes()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])
    return data
