"""Train the demo model (clipflow.embed.demo_model) and write its weights:

    python -m clipflow.embed.demo_model.train [--images 6000] [--epochs 20]

Images are rendered as the demo renders them (clipflow.demo.render), from rows the demo never uses (its rows
start at 0; these at 1,000,000), preprocessed as the embedding step will (open_clip's transforms for the
architecture), and trained with CLIP's contrastive loss. Seeded: the same command writes the same weights on
the same machine. About 5 minutes on 2 CPU cores.
"""

import argparse
import time

import open_clip
import torch

from clipflow import demo
from clipflow.embed.demo_model import ARCH, WEIGHTS

FIRST_ROW = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", default=str(WEIGHTS))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH)
    tokenizer = open_clip.get_tokenizer(ARCH)
    rows = range(FIRST_ROW, FIRST_ROW + args.images)
    started = time.perf_counter()
    images = torch.stack([preprocess(demo.render(row)) for row in rows])
    captions = [demo.caption(row) for row in rows]
    # Half the time without its scene ("a red circle"), as people search: the model learns colour and shape alone.
    tokens = tokenizer(captions), tokenizer([" ".join(caption.split()[:3]) for caption in captions])
    print(f"rendered {len(rows)} images in {time.perf_counter() - started:.0f} s", flush=True)
    steps = args.epochs * (len(rows) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    loss_of = open_clip.ClipLoss()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(rows))
        short = torch.rand(len(rows)) < 0.5
        epoch_tokens = torch.where(short[:, None], tokens[1], tokens[0])
        for start in range(0, len(rows) - args.batch_size + 1, args.batch_size):
            batch = order[start : start + args.batch_size]
            image_features, text_features, scale = model(images[batch], epoch_tokens[batch])
            loss = loss_of(image_features, text_features, scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        seconds = time.perf_counter() - started
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f} ({seconds:.0f} s)", flush=True)
    state = {name: value.half() for name, value in model.state_dict().items()}  # half the file; loads into fp32
    torch.save({"state_dict": state}, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
