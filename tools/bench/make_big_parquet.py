"""A large Pick-a-Pic-format parquet file for `mapo bench data` (throughput at 1024², and
memory while streaming a file bigger than RAM). Rows cycle through a pool of distinct
1024×1280 / 1280×1024 JPEGs (noise over gradients, quality 90), written row group by row
group so this script itself stays small in memory.

    python tools/bench/make_big_parquet.py OUT.parquet --gb 26
"""
import argparse
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = (1024, 1280) if seed % 2 else (1280, 1024)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * 200
    img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--rows-per-group", type=int, default=256)
    a = ap.parse_args()
    pool = [jpeg(s) for s in range(16)]
    schema = pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                        ("label_0", pa.float64()), ("label_1", pa.float64())])
    target, written, row = a.gb * 1e9, 0, 0
    # No dictionary encoding: repeated images must take their full size on disk.
    with pq.ParquetWriter(a.out, schema, compression="snappy", use_dictionary=False) as w:
        while written < target:
            n = a.rows_per_group
            idx = [(row + i) % len(pool) for i in range(n)]
            cols = {
                "caption": [f"row {row + i}" for i in range(n)],
                "jpg_0": [pool[j] for j in idx],
                "jpg_1": [pool[(j + 1) % len(pool)] for j in idx],
                "label_0": [1.0] * n,
                "label_1": [0.0] * n,
            }
            w.write_table(pa.table(cols, schema=schema))
            written += sum(len(pool[j]) + len(pool[(j + 1) % len(pool)]) for j in idx)
            row += n
    print(f"wrote {a.out}: {row} rows, {written / 1e9:.1f} GB of images")


if __name__ == "__main__":
    main()
