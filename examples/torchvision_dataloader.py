"""A searched policy in a plain PyTorch training loop, through the self-contained torchvision export.

    policy-search export my-campaign --format torchvision --top 1      # writes rank1.py (torch + torchvision only)
    python examples/torchvision_dataloader.py results/my-campaign/export/torchvision/rank1.py
"""

import argparse
import importlib.util

import torch
from sample_data import ZipImages
from torch.utils.data import DataLoader
from torchvision.transforms import v2

parser = argparse.ArgumentParser()
parser.add_argument("exported", help="rank<i>.py written by `policy-search export --format torchvision`")
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()

spec = importlib.util.spec_from_file_location("exported_policy", args.exported)
policy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(policy)

train_tf = v2.Compose([v2.PILToTensor(), policy.build_transform(seed=0), v2.ToDtype(torch.float32, scale=True)])
data = ZipImages(transform=train_tf)
loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, data.num_classes))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step, (x, y) in zip(range(args.steps), loader, strict=False):  # noqa: B007 (step is printed below)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"ok: {step + 1} steps, batch {tuple(x.shape)}, loss {loss.item():.3f}")
