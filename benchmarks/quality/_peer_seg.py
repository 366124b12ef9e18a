"""Peer side of the seg quality benchmark, run in the smp venv: what a plain user writes.

segmentation_models_pytorch U-Net, ResNet-18 encoder, no pretrained weights; Adam 1e-3,
cross-entropy + Dice, random horizontal and vertical flips, whole images padded to a
multiple of 32 (pad pixels ignored); trains until the wall-time budget is spent, then
writes one label PNG per test image at its original size. Last stdout line: JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image

IGNORE = 255
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def load_image(path: str) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return (torch.from_numpy(arr).permute(2, 0, 1) - MEAN) / STD


def load_label(path: str, binary: bool) -> torch.Tensor:
    lab = np.array(Image.open(path)).astype(np.int64)
    if binary:
        lab = np.where(lab == 255, 1, lab)
    return torch.from_numpy(lab)


def pad32(x: torch.Tensor, value: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % 32, 0, (-h) % 32), value=value)


def batchify(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    h = max(i.shape[-2] for i, _ in items)
    w = max(i.shape[-1] for i, _ in items)
    h, w = h + (-h) % 32, w + (-w) % 32
    imgs, labs = [], []
    for img, lab in items:
        ph, pw = h - img.shape[-2], w - img.shape[-1]
        imgs.append(F.pad(img, (0, pw, 0, ph)))
        labs.append(F.pad(lab, (0, pw, 0, ph), value=IGNORE))
    return torch.stack(imgs), torch.stack(labs)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    k, binary = spec["num_classes"], spec["binary"]
    data = [(load_image(i), load_label(lab, binary)) for i, lab in spec["train"]]
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)
    bs = spec["batch_size"]
    gen = torch.Generator().manual_seed(spec["seed"])
    model.train()
    start = time.perf_counter()
    steps = seen = 0
    while time.perf_counter() - start < spec["budget_s"]:
        order = torch.randperm(len(data), generator=gen).tolist()
        for b in range(0, len(order) - bs + 1, bs):
            items = []
            for j in order[b : b + bs]:
                img, lab = data[j]
                if torch.rand(1, generator=gen) < 0.5:
                    img, lab = img.flip(-1), lab.flip(-1)
                if torch.rand(1, generator=gen) < 0.5:
                    img, lab = img.flip(-2), lab.flip(-2)
                items.append((img, lab))
            x, y = batchify(items)
            logits = model(x)
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE) + dice(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            seen += len(items)
            if steps % 10 == 0:
                el = time.perf_counter() - start
                print(f"step {steps} loss {loss.item():.4f} {seen / el:.2f} img/s", file=sys.stderr)
            if time.perf_counter() - start >= spec["budget_s"]:
                break
    train_wall = time.perf_counter() - start
    model.eval()
    out = Path(spec["pred_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for path in spec["test"]:
            img = load_image(path)
            h, w = img.shape[-2:]
            pred = model(pad32(img, 0.0)[None])[0, :, :h, :w].argmax(0).to(torch.uint8)
            Image.fromarray(pred.numpy()).save(out / f"{Path(path).stem}.png")
    predict_wall = time.perf_counter() - t0
    result = {
        "command": "smp.Unet('resnet18', encoder_weights=None) + Adam(1e-3), CE+Dice, flips, "
        f"batch {bs}, whole images padded to /32, until {spec['budget_s']:.0f} s",
        "smp_version": smp.__version__,
        "steps": steps,
        "train_wall_s": round(train_wall, 1),
        "train_samples_per_s": round(seen / train_wall, 3),
        "predict_wall_s": round(predict_wall, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
