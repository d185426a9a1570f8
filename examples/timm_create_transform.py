"""A searched policy through timm: the exported ``auto_augment`` string into ``timm.data.create_transform``.

    policy-search export my-campaign --format timm --top 1             # writes rank1.txt, e.g. rand-m3-n2-p1-inc1
    python examples/timm_create_transform.py "$(cat results/my-campaign/export/timm/rank1.txt)"
"""

import argparse

import torch
from sample_data import ZipImages
from timm.data import create_transform
from torch.utils.data import DataLoader

parser = argparse.ArgumentParser()
parser.add_argument("config", help="the auto_augment string written by `policy-search export --format timm`")
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()

train_tf = create_transform(32, is_training=True, auto_augment=args.config.strip())
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
