"""A searched policy as an albumentations pipeline: ``albumentations.load`` of the exported JSON (AutoAlbument-style).

    policy-search export my-campaign --format albumentations --top 1   # writes rank1.json
    python examples/albumentations_pipeline.py results/my-campaign/export/albumentations/rank1.json
"""

import argparse

import albumentations as A
import numpy as np
import torch
from sample_data import ZipImages
from torch.utils.data import DataLoader

parser = argparse.ArgumentParser()
parser.add_argument("exported", help="rank<i>.json written by `policy-search export --format albumentations`")
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()

policy = A.load(args.exported)  # a Compose of albumentations' own transforms
pipeline = A.Compose([policy, A.ToFloat(max_value=255.0)])


def train_tf(image):
    out = pipeline(image=np.asarray(image))["image"]  # HWC float32
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


data = ZipImages(transform=train_tf)
loader = DataLoader(data, batch_size=32, shuffle=True)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, data.num_classes))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step, (x, y) in zip(range(args.steps), loader, strict=False):  # noqa: B007 (step is printed below)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"ok: {step + 1} steps, batch {tuple(x.shape)}, loss {loss.item():.3f}")
