"""A small Pick-a-Pic-format preference set for mapo's data tests.

Columns: caption (string), jpg_0 / jpg_1 (image bytes: PNG or JPEG), label_0 / label_1
(float64). 30 rows in row groups of 8 (so readers must cross row groups): chosen = the
image with label 1; rows 5, 11 and 17 are ties (0.5/0.5); row 23 has a non-image blob in
jpg_1; row 26 has labels 0/0 (not a preference). Images are 40×32 (landscape) or 32×40
(portrait) gradients with a square whose colour encodes the row and the side (0 or 1),
so tests can tell which image came out as chosen.

With `--unpaired`, Diffusion-KTO-style rows instead: caption, image (bytes), label (int64,
1 desirable / 0 undesirable). 12 rows in row groups of 5; the label is 1 on even rows;
row 3 has label 2 (not a label), row 7 a non-image blob, row 9 a null label. The image of
row r is `image(r, label)`.

    python tools/golden/make_parquet.py tests/fixtures/parquet/pairs.parquet
    python tools/golden/make_parquet.py --unpaired tests/fixtures/parquet/unpaired.parquet
"""
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image(row: int, side: int, fmt: str) -> bytes:
    w, h = (40, 32) if row % 2 == 0 else (32, 40)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (x * 255 // (w - 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // (h - 1)).astype(np.uint8)
    img[..., 2] = 40 + 200 * side
    img[h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4] = [row * 8 % 256, 255 * side, 128]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def main(out: str) -> None:
    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for r in range(30):
        fmt = "PNG" if r % 3 else "JPEG"
        a, b = image(r, 0, fmt), image(r, 1, fmt)
        l0, l1 = (1.0, 0.0) if r % 4 else (0.0, 1.0)
        if r in (5, 11, 17):
            l0, l1 = 0.5, 0.5
        if r == 23:
            b = b"this is not an image"
        if r == 26:
            l0, l1 = 0.0, 0.0
        rows["caption"].append(f"pair {r}: a gradient with a square")
        rows["jpg_0"].append(a)
        rows["jpg_1"].append(b)
        rows["label_0"].append(l0)
        rows["label_1"].append(l1)
    table = pa.table(
        {
            "caption": pa.array(rows["caption"], pa.string()),
            "jpg_0": pa.array(rows["jpg_0"], pa.binary()),
            "jpg_1": pa.array(rows["jpg_1"], pa.binary()),
            "label_0": pa.array(rows["label_0"], pa.float64()),
            "label_1": pa.array(rows["label_1"], pa.float64()),
        }
    )
    pq.write_table(table, out, row_group_size=8, compression="snappy")
    print(f"wrote {out}: {table.num_rows} rows")


def unpaired(out: str) -> None:
    captions, images, labels = [], [], []
    for r in range(12):
        label = 1 if r % 2 == 0 else 0
        img = image(r, label, "PNG" if r % 3 else "JPEG")
        if r == 7:
            img = b"this is not an image"
        captions.append(f"image {r}: a gradient with a square")
        images.append(img)
        labels.append(None if r == 9 else (2 if r == 3 else label))
    table = pa.table(
        {
            "caption": pa.array(captions, pa.string()),
            "image": pa.array(images, pa.binary()),
            "label": pa.array(labels, pa.int64()),
        }
    )
    pq.write_table(table, out, row_group_size=5, compression="snappy")
    print(f"wrote {out}: {table.num_rows} rows")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--unpaired":
        unpaired(args[1] if len(args) > 1 else "tests/fixtures/parquet/unpaired.parquet")
    else:
        main(args[0] if args else "tests/fixtures/parquet/pairs.parquet")
