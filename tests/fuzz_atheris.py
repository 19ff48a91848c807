"""Coverage-guided fuzzing of the per-item decoders with atheris (optional; not part of `make test`).

    pip install atheris
    python tests/fuzz_atheris.py -atheris_runs=50000 [corpus_dir]

Any exception other than ItemError, or a crash/hang of the interpreter, is a finding. The seed
corpus is pydicom's test files plus small PNG/JPEG/TIFF images.
"""

import io
import os
import sys

import atheris

with atheris.instrument_imports():
    from medprep.transforms.dicom_render import RenderOptions
    from medprep.transforms.errors import ItemError
    from medprep.transforms.image import ImageOptions, decode_any

OPTIONS = ImageOptions(size=32, render=RenderOptions(max_pixels=4_000_000))


def one_input(data: bytes) -> None:
    try:
        decode_any(data, "fuzz.dcm" if data[128:132] == b"DICM" else "fuzz", OPTIONS)
    except ItemError:
        pass


def seed_corpus(folder: str) -> None:
    import numpy as np
    from PIL import Image
    from pydicom.data import get_testdata_file

    os.makedirs(folder, exist_ok=True)
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"):
        path = get_testdata_file(name)
        if path:
            open(os.path.join(folder, name), "wb").write(open(path, "rb").read())
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        open(os.path.join(folder, "seed." + fmt.lower()), "wb").write(buf.getvalue())


if __name__ == "__main__":
    corpus = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is None:
        corpus = os.path.join(os.environ.get("TMPDIR", "/tmp"), "medprep-fuzz-corpus")
        sys.argv.append(corpus)
    seed_corpus(corpus)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
