"""DataComp's tasks on Hugging Face data sets: Flickr and MSCOCO image-text retrieval (clip_benchmark's, with
DataComp's mean_recall@1) and WinoGAViL's associations (Jaccard index of the cue's top images), as DataComp's
retr_eval and wino_eval run them: the same batches, autocast only on a GPU (clip_benchmark 1.4.0's default amp and
WinoGAViL's CUDA autocast), and the same tie-breaking (numpy's argsort)."""

import numpy as np
import torch

from clipflow.evaluate.datacomp.hf_cache import decode_image, read_table

WORKERS = 4
RECALL_K = [1, 5, 10]
VOWELS = "aeiou"


class _Rows(torch.utils.data.Dataset):
    """A cached table's rows, each through `item`, decoded as they are read."""

    def __init__(self, table, item):
        self.table, self.item = table, item

    def __len__(self):
        return self.table.num_rows

    def __getitem__(self, index):
        return self.item(self.table.slice(index, 1).to_pylist()[0])


def retrieval(task, hf_cache, model, tokenizer, transform, device: str, batch_size: int) -> dict:
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    def pair(row):
        return transform(decode_image(row["image"])), row["caption"]

    rows = _Rows(read_table(hf_cache, task.hub_name), pair)
    dataloader = torch.utils.data.DataLoader(
        rows, batch_size=batch_size, shuffle=False, num_workers=WORKERS, collate_fn=image_captions_collate_fn
    )
    metrics = zsr.evaluate(model, dataloader, tokenizer, recall_k_list=RECALL_K, device=device, amp=device == "cuda")
    metrics["mean_recall@1"] = 0.5 * (metrics["text_retrieval_recall@1"] + metrics["image_retrieval_recall@1"])
    return metrics


def prompt(cue: str) -> str:
    """WinoGAViL's text for a cue: 'A cue' or 'An cue', lowercased."""
    cue = cue.lower()
    return f"An {cue}" if cue[0] in VOWELS else f"A {cue}"


def winogavil(task, hf_cache, model, tokenizer, transform, device: str, batch_size: int) -> dict:
    """Each example's Jaccard index between its associations and the cue's top images (as many as it has
    associations), averaged per number of candidates; the main metric is over examples of 10 and 12 candidates.
    One example a batch, as DataComp runs it (`batch_size` is not used)."""
    from sklearn.metrics import jaccard_score

    def example(row):
        images = torch.stack([transform(decode_image(image)) for image in row["candidate_images"]])
        return images, tokenizer([prompt(row["cue"])]), np.isin(row["candidates"], row["associations"])

    rows = _Rows(read_table(hf_cache, task.hub_name), example)
    dataloader = torch.utils.data.DataLoader(
        rows, batch_size=1, shuffle=False, num_workers=WORKERS, collate_fn=lambda batch: batch[0]
    )
    groups, scores = [], []
    for images, text, y_true in dataloader:
        with torch.no_grad(), torch.autocast("cuda", enabled=device == "cuda"):
            image_features = model.encode_image(images.to(device), normalize=True)
            text_features = model.encode_text(text.to(device), normalize=True)
            similarities = (text_features @ image_features.T).squeeze(0).cpu().numpy()
        top = np.argsort(similarities)[-y_true.sum() :]
        scores.append(jaccard_score(y_true, np.isin(np.arange(len(images)), top)))
        groups.append(len(images))
    groups, scores = np.array(groups), np.array(scores)
    means = {"avg_jaccard_score": scores.mean()}
    means.update({f"jaccard_score_{size}": scores[groups == size].mean() for size in (5, 6, 10, 12)})
    means.update({"jaccard_score_5-6": scores[groups <= 6].mean(), "jaccard_score_10-12": scores[groups >= 10].mean()})
    return {name: float(mean) for name, mean in means.items()}
