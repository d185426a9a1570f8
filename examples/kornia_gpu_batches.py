"""A searched policy on GPU batches (CPU without a GPU) through the self-contained kornia export.

    policy-search export my-campaign --format kornia --top 1           # writes rank1.py (torch + kornia only)
    python examples/kornia_gpu_batches.py results/my-campaign/export/kornia/rank1.py
"""

import argparse
import importlib.util

import torch
from sample_data import ZipImages
from torch.utils.data import DataLoader
from torchvision.transforms import v2

parser = argparse.ArgumentParser()
parser.add_argument("exported", help="rank<i>.py written by `policy-search export --format kornia`")
parser.add_argument("--steps", type=int, default=4)
args = parser.parse_args()

spec = importlib.util.spec_from_file_location("exported_policy", args.exported)
policy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(policy)

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
augment = policy.build_augmentation(seed=0).to(device)  # per-sample draws, whole batch on the device
data = ZipImages(transform=v2.PILToTensor())  # uint8 (3, 32, 32); augmentation happens on the batch
loader = DataLoader(data, batch_size=64, shuffle=True)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, data.num_classes)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step, (x, y) in zip(range(args.steps), loader, strict=False):  # noqa: B007 (step is printed below)
    x = augment(x.to(device, non_blocking=True)).float() / 255.0
    loss = torch.nn.functional.cross_entropy(model(x), y.to(device))
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"ok: {step + 1} steps on {device}, batch {tuple(x.shape)}, loss {loss.item():.3f}")
