#!/usr/bin/env python
"""Train the default demo model ``fmnist_resnet`` on the Fashion-MNIST TRAIN split.

Reproduces ``zsq_engine/models/weights/fmnist_resnet.pt`` (state dict only, fp32). The test
split is used once, after the last epoch, to report accuracy; the final-epoch weights are
saved whatever it says (no model selection on test data).

Recipe: SGD (momentum 0.9, Nesterov), weight decay 5e-4, batch 128, one-cycle LR with peak
0.1, augmentation = random 28x28 crop from the image zero-padded by 2 + horizontal flip,
inputs normalised with FMNIST_MEAN / FMNIST_STD (0.2860 / 0.3530).

Determinism: Python/NumPy/torch are seeded, batches and augmentation draw from one seeded
torch.Generator, there are no DataLoader workers and torch.use_deterministic_algorithms(True)
is on. Reruns with the same seed, torch version, CPU type and --threads give identical weights
(oneDNN's reduction order can depend on the thread count and CPU ISA).

Committed weights were produced with:

    python scripts/train_fmnist.py --epochs 20 --seed 0 --threads 1 \
        --out zsq_engine/models/weights/fmnist_resnet.pt

    seed 0, 20 epochs, torch 2.13.0+cpu, 1 CPU thread (shared 2-core machine),
    training wall time 1784 s (~30 min), final test accuracy 93.03% (10000 test images)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from zsq_engine.data.fashion_mnist import (  # noqa: E402
    FMNIST_MEAN,
    FMNIST_STD,
    fashion_mnist_loader,
    load_fashion_mnist,
)
from zsq_engine.models import get_model  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "zsq_engine" / "models" / "weights" / "fmnist_resnet.pt"
CROP_PAD = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"state-dict output file (default {DEFAULT_OUT})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="directory with the four Fashion-MNIST idx(.gz) files "
                        "(default: $ZSQ_FMNIST_DIR, then /usr/share/datasets/fashion-mnist)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: robust on a shared machine)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--epochs, --batch-size and --threads must be >= 1")
    return args


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding CROP_PAD) + horizontal flip of uint8 ``[B, 28, 28]`` -> same shape."""
    b, h, w = images.shape
    padded = F.pad(images, (CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD))
    dy = torch.randint(0, 2 * CROP_PAD + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * CROP_PAD + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], w - 1 - cols[None, :], cols[None, :])  # [B, W]
    rows = dy[:, None] + torch.arange(h)[None, :]  # [B, H]
    cols = dx[:, None] + cols
    batch = torch.arange(b)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def to_input(images: torch.Tensor) -> torch.Tensor:
    x = images.unsqueeze(1).to(torch.float32).div_(255.0)
    x = x.sub_(FMNIST_MEAN[0]).div_(FMNIST_STD[0])
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_dir) -> float:
    """Top-1 accuracy (%) on the full test split."""
    model.eval()
    correct = total = 0
    for x, y in fashion_mnist_loader("test", batch_size=1000, root=data_dir):
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / total


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)

    train_images, train_labels = load_fashion_mnist("train", args.data_dir)
    n = train_labels.numel()
    steps_per_epoch = (n + args.batch_size - 1) // args.batch_size

    model = get_model("fmnist_resnet").to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
    )

    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.no_progress,
                   dynamic_ncols=True, mininterval=2.0)
        for step in bar:
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            x = to_input(augment(train_images[idx], gen))
            y = train_labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.4f}")
        print(f"epoch {epoch + 1}: train loss {loss_sum.item() / n:.4f}, "
              f"train acc (augmented) {100.0 * correct.item() / n:.2f}%, "
              f"elapsed {time.time() - start:.0f} s", flush=True)
    wall = time.time() - start

    model = model.to(memory_format=torch.contiguous_format)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)

    # Evaluate what was written, through the same path users load it with.
    reloaded = get_model("fmnist_resnet", weights_path=args.out)
    acc = evaluate(reloaded, args.data_dir)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"seed {args.seed}, epochs {args.epochs}, threads {args.threads}, training wall time {wall:.0f} s")
    print(f"test accuracy: {acc:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
